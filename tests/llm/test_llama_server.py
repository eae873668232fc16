"""local_llm_server() with llama.cpp's own llama-server: choosing the server, the extra CPU buffers
probe (against a fake binary that crashes on demand), and the real server (slots, logprobs, the
prompt tokens it reuses from its cache, scores that agree with llama-cpp-python's server)."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from test_local_server import QUERY, apple_nodes

from llamaindex_rerankers.endpoints import llamacpp as server_module
from llamaindex_rerankers.endpoints import llamacpp_files
from llamaindex_rerankers.endpoints.llamacpp import (
    CACHE_ENV,
    LLAMA_SERVER_ENV,
    LocalLLMServer,
    LocalLLMServerError,
    find_llama_server,
    local_llm_server,
)
from llamaindex_rerankers.llm import LLMReranker
from llamaindex_rerankers.llm.calibration import CONTENT_FREE_PASSAGES

FAKE = Path(__file__).with_name("fake_llama_server.py")


@pytest.fixture
def no_llama_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing to find: no env var, empty user and checkout caches, a PATH without
    llama-server."""
    monkeypatch.delenv(LLAMA_SERVER_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty-user-cache"))
    monkeypatch.setattr(llamacpp_files, "LLAMA_SERVER_CACHE", tmp_path / "empty-cache")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))


@pytest.fixture
def fake_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An executable ``llama-server`` that runs fake_llama_server.py; returns its call log."""
    binary = tmp_path / "llama-server"
    binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.jsonl"
    log.touch()
    monkeypatch.setenv(LLAMA_SERVER_ENV, str(binary))
    monkeypatch.setenv("FAKE_LLAMA_SERVER_LOG", str(log))
    return log


@pytest.fixture
def model_file(tmp_path: Path) -> str:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF fake")
    return str(path)


def start(*args: Any, **kwargs: Any) -> None:
    """Start a server and stop it at once (for the errors of start-up)."""
    with local_llm_server(*args, **kwargs):
        pass


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


# -- choosing the server ---------------------------------------------------------------


def test_an_explicit_llama_server_that_is_missing_says_how_to_get_it(
    no_llama_server: None, model_file: str
) -> None:
    with pytest.raises(LocalLLMServerError) as raised:
        start(model_file, server="llama-server")
    message = str(raised.value)
    # What a pip user can do (the package's build command, the setting), and a checkout's make.
    assert "`llamaindex-rerankers llm-server --build`" in message
    assert f"${LLAMA_SERVER_ENV}" in message and "--llama-server" in message
    assert "empty-user-cache" in message and "make llama-server" in message


def test_a_bad_llama_server_variable_is_an_error_not_a_fallback(
    monkeypatch: pytest.MonkeyPatch, model_file: str
) -> None:
    monkeypatch.setenv(LLAMA_SERVER_ENV, "/nonexistent/llama-server")
    with pytest.raises(LocalLLMServerError, match="not an executable file"):
        start(model_file)


def test_auto_without_llama_server_chooses_llama_cpp_python_and_says_so(
    no_llama_server: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llamaindex_rerankers.endpoints.llamacpp")
    with pytest.raises(LocalLLMServerError, match="does not exist"):
        start("/nonexistent/model.gguf")
    assert "local LLM server: llama-cpp-python" in caplog.text
    assert "make llama-server" in caplog.text


def test_the_project_cache_is_searched_newest_version_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(LLAMA_SERVER_ENV, raising=False)
    monkeypatch.setattr(llamacpp_files, "LLAMA_SERVER_CACHE", tmp_path)
    for version in ("0.3.9", "0.3.36"):
        binary = tmp_path / version / "llama-server"
        binary.parent.mkdir()
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    assert find_llama_server() == str(tmp_path / "0.3.36" / "llama-server")


def make_binary(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_user_cache_honours_the_cache_variables_and_is_searched_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(LLAMA_SERVER_ENV, raising=False)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "llamaindex-rerankers" / "llama-server"
    assert server_module.llama_server_cache() == user
    checkout = make_binary(tmp_path / "checkout" / "0.3.40" / "llama-server")
    monkeypatch.setattr(llamacpp_files, "LLAMA_SERVER_CACHE", checkout.parents[1])
    assert find_llama_server() == str(checkout)  # the checkout's, while the user has none
    built = make_binary(user / "0.3.36" / "llama-server")
    assert find_llama_server() == str(built)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert server_module.llama_server_cache() == tmp_path / "mine" / "llama-server"


def test_an_installed_package_does_not_look_beside_its_source_files(tmp_path: Path) -> None:
    import shutil
    import subprocess

    package = Path(server_module.__file__).parents[1]
    site = tmp_path / "lib" / "python3" / "site-packages"
    shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "from llamaindex_rerankers.endpoints import llamacpp as server; "
        "print(server.LLAMA_SERVER_CACHE)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", code + "; print(server.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [
        "None",
        str(site / "llamaindex_rerankers" / "endpoints" / "llamacpp.py"),
    ]
    # From this checkout, its .cache/llama-server (make llama-server) is searched.
    assert package.parent / ".cache" / "llama-server" == server_module.LLAMA_SERVER_CACHE


def test_an_explicit_binary_argument_wins_and_must_exist(
    fake_binary: Path, model_file: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_SERVER_MODE", "fine")
    binary = Path(os.environ[LLAMA_SERVER_ENV])
    monkeypatch.setenv(LLAMA_SERVER_ENV, "/nonexistent/llama-server")  # the argument wins
    with local_llm_server(model_file, llama_server=binary) as srv:
        assert srv.kind == "llama-server"
    assert len(calls(fake_binary)) == 1
    with pytest.raises(LocalLLMServerError, match="llama_server='/no/such' is not an executable"):
        start(model_file, llama_server="/no/such")
    with pytest.raises(ValueError, match="server='llama-cpp-python' does not run"):
        start(model_file, llama_server=binary, server="llama-cpp-python")


def test_the_command_line_passes_the_binary_and_the_extra_buffers_setting(
    fake_binary: Path, model_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llamaindex_rerankers.cli.llm_options import llm_endpoint
    from llamaindex_rerankers.cli.parser import build_parser

    monkeypatch.setenv("FAKE_LLAMA_SERVER_MODE", "crash-at-start")  # crashes with the buffers
    binary = os.environ[LLAMA_SERVER_ENV]
    monkeypatch.delenv(LLAMA_SERVER_ENV)  # the flag alone names it
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    argv = ["query", "q", "--persist-dir", "D", "--reranker", "llm", "--llm-gguf", model_file,
            "--llama-server", binary, "--cpu-extra-buffers", "off"]  # fmt: skip
    with llm_endpoint(build_parser().parse_args(argv), needed=True) as endpoint:
        assert endpoint is not None and endpoint.local
    # Started once, without the extra buffers: no probe.
    assert [("--no-repack" in argv) for argv in calls(fake_binary)] == [True]


FAKE_CMAKE = """cmake_minimum_required(VERSION 3.10)
project(fake_llama_server CXX)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_executable(llama-server tools/server/server.cpp)
"""
FAKE_MAIN = '#include <cstdio>\nint main() { std::puts("version: 0 (fake)"); return 0; }\n'


@pytest.mark.slow
def test_llm_server_build_compiles_into_the_user_cache_where_it_is_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tarfile

    from llamaindex_rerankers.cli import main

    # A stand-in sdist laid out as llama-cpp-python's, whose llama-server is a tiny program:
    # the real build script, cmake and compiler run; only llama.cpp's 4-5 min are spared.
    version = server_module.LLAMA_SERVER_VERSION
    src = tmp_path / "sdist" / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    (src / "tools" / "server").mkdir(parents=True)
    (src / "CMakeLists.txt").write_text(FAKE_CMAKE)
    (src / "tools" / "server" / "server.cpp").write_text(FAKE_MAIN)
    sdist = tmp_path / f"llama_cpp_python-{version}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(tmp_path / "sdist" / f"llama_cpp_python-{version}", f"llama_cpp_python-{version}")
    monkeypatch.setenv("LLAMA_CPP_PYTHON_SDIST", str(sdist))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv(LLAMA_SERVER_ENV, raising=False)
    monkeypatch.setattr(llamacpp_files, "LLAMA_SERVER_CACHE", None)  # as an installed package
    monkeypatch.setenv("PATH", os.environ["PATH"])  # restored after the test
    expected = tmp_path / "xdg" / "llamaindex-rerankers" / "llama-server" / version / "llama-server"

    assert main(["llm-server", "--build"]) == 0
    assert capsys.readouterr().out.strip() == str(expected)
    assert expected.is_file() and find_llama_server() == str(expected)
    sdist.unlink()  # a second --build finds it and builds nothing
    assert main(["llm-server", "--build"]) == 0
    assert capsys.readouterr().out.strip() == str(expected)


def test_bad_arguments_are_rejected(model_file: str) -> None:
    with pytest.raises(ValueError, match="server must be one of"):
        start(model_file, server="vllm")
    with pytest.raises(ValueError, match="parallel must be >= 1"):
        start(model_file, parallel=0)


# -- the extra CPU buffers probe, against the fake binary --------------------------------


def test_slots_context_and_alias_on_the_command_line(
    fake_binary: Path, model_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_SERVER_MODE", "fine")
    with local_llm_server(model_file, n_ctx=1024, parallel=3) as srv:
        assert (srv.kind, srv.parallel, srv.cpu_extra_buffers) == ("llama-server", 3, True)
        assert srv.model == model_file and srv.namespace.startswith("gguf-sha256:")
    (argv,) = calls(fake_binary)  # the probe passed: started once
    assert argv[argv.index("--ctx-size") + 1] == "3072"  # llama-server divides it among slots
    assert argv[argv.index("--parallel") + 1] == "3"
    assert argv[argv.index("--alias") + 1] == model_file
    assert "--cont-batching" in argv and "--no-repack" not in argv


@pytest.mark.parametrize("mode", ["crash-at-start", "crash-at-request"])
def test_auto_restarts_without_extra_buffers_when_they_crash(
    fake_binary: Path,
    model_file: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_SERVER_MODE", mode)
    with local_llm_server(model_file) as srv:
        assert srv.cpu_extra_buffers is False
        result = LLMReranker(model=srv.model, base_url=srv.base_url).rerank(apple_nodes(), QUERY)
        assert result.report.llm is not None and result.report.llm.failures == 0
    first, second = calls(fake_binary)
    assert "--no-repack" not in first and "--no-repack" in second
    assert "extra CPU buffer types" in caplog.text and "code -11" in caplog.text
    assert "cpu_extra_buffers=False (on the command line: --cpu-extra-buffers off)" in caplog.text


def test_explicit_extra_buffers_are_not_probed(
    fake_binary: Path, model_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_SERVER_MODE", "crash-at-start")
    with local_llm_server(model_file, cpu_extra_buffers=False) as srv:
        assert srv.cpu_extra_buffers is False
    assert [("--no-repack" in argv) for argv in calls(fake_binary)] == [True]
    with pytest.raises(LocalLLMServerError, match="exited with code -11"):
        start(model_file, cpu_extra_buffers=True)


# -- the real llama-server -------------------------------------------------------------


@pytest.fixture
def real_llama_server(llm_server: LocalLLMServer) -> LocalLLMServer:
    """The session's server, which ``server="auto"`` makes llama-server where it is built."""
    if llm_server.kind != "llama-server":
        if os.environ.get("LLAMAINDEX_RERANKERS_REQUIRE_LLAMA_SERVER"):
            pytest.fail("llama-server was not found; build it with `make llama-server`")
        pytest.skip("llama-server is not built (make llama-server)")
    return llm_server


def test_real_llama_server_flags_match_what_it_runs_with(
    real_llama_server: LocalLLMServer,
) -> None:
    argv = list(real_llama_server.process.args)  # type: ignore[arg-type]
    assert ("--no-repack" not in argv) is real_llama_server.cpu_extra_buffers
    assert real_llama_server.parallel == server_module.DEFAULT_PARALLEL


def test_real_llama_server_reuses_the_shared_prompt_prefix(
    real_llama_server: LocalLLMServer,
) -> None:
    reranker = LLMReranker(
        model=real_llama_server.model, base_url=real_llama_server.base_url, concurrency=1
    )
    result = reranker.rerank(apple_nodes(), QUERY)
    llm = result.report.llm
    assert llm is not None and llm.failures == 0
    assert llm.prompt_cache_reports == llm.calls == 3 + len(CONTENT_FREE_PASSAGES)
    assert llm.prompt_tokens_evaluated + llm.prompt_tokens_cached == llm.prompt_tokens
    # The instructions and the query come before the passage: after the first judgement the
    # server takes them from its cache and evaluates little more than the passage.
    assert llm.prompt_tokens_cached > 0
    assert llm.prompt_tokens_evaluated < llm.prompt_tokens
    assert all(n.node.metadata["rerank_source"] == "logprobs" for n in result.nodes)


def test_real_llama_server_scores_agree_with_llama_cpp_python(
    real_llama_server: LocalLLMServer, gguf_path: str
) -> None:
    def label_probs(srv: LocalLLMServer) -> dict[str, dict[str, float]]:
        reranker = LLMReranker(model=srv.model, base_url=srv.base_url, cache_namespace="x")
        out = reranker.rerank(apple_nodes(), QUERY).nodes
        return {n.node.id_: n.node.metadata["rerank_label_probs"] for n in out}

    ours = label_probs(real_llama_server)
    with local_llm_server(gguf_path, server="llama-cpp-python", startup_timeout=180) as other:
        assert other.kind == "llama-cpp-python" and other.namespace == real_llama_server.namespace
        theirs = label_probs(other)
    assert ours.keys() == theirs.keys()
    # Same model, prompt and label tokens; the numbers differ as much as llama-server differs
    # from itself. Measured on 2026-12-05 (3 passages x 3 labels): a fresh llama-server's first
    # call and its later calls (which reuse the prompt prefix from its cache, and so sum the
    # floats in other batch shapes) differ by up to 0.05 per label probability; llama-cpp-python
    # (no reuse here, deterministic) differs from llama-server by 0.085 (first call) to 0.134
    # (later calls) at most, 0.029 to 0.040 on average. The bounds sit above those figures and
    # well below what a wrong template or wrong label tokens do (probabilities that move by
    # tenths on every passage, not on one).
    gaps = []
    for node_id, probs in ours.items():
        assert probs.keys() == theirs[node_id].keys()
        gaps += [abs(p - theirs[node_id][label]) for label, p in probs.items()]
    assert max(gaps) <= 0.2, (gaps, ours, theirs)
    assert sum(gaps) / len(gaps) <= 0.06, (gaps, ours, theirs)
