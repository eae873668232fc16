"""Schemathesis, a client we did not write, against a real ``serve`` process (the cross-encoder
and SmolLM2 loaded): requests generated from our own ``/openapi.json``, in positive mode (every
schema-valid request is served) and negative mode (every schema-invalid one is refused with a
4xx), with every check Schemathesis has: no 5xx, every status and content type documented,
responses that match their schemas.

Bounded: a fixed seed and a fixed number of examples per operation (a few minutes each on two
cores). ``tests/server/schemathesis_hooks.py`` holds the one rule JSON Schema cannot state.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from serve_helpers import API_KEY, ServeProcess

pytestmark = [pytest.mark.server, pytest.mark.slow]

HERE = Path(__file__).resolve().parent

#: Checks that need an operation graph or credentials we do not have (stateful links between
#: operations, object ownership): nothing in this API to run them on.
NOT_APPLICABLE = "use_after_free,ensure_resource_availability,object_level_authorization"

# --generation-codec utf-8: JSON exchanged between systems is UTF-8 (RFC 8259, 8.1), which
# cannot carry an unpaired surrogate; those are refused with a 422 that names the field
# (test_hostile_input.py), so they are not schema-valid input here.
# --max-response-time 600: speed is measured by the benchmarks, not asserted here (a chat
# answer from SmolLM2 takes seconds on two busy cores).

CONFIG = """
[checks.positive_data_acceptance]
# 413: --max-body-bytes bounds the whole body, a limit no JSON Schema keyword states (it is in
# the 413 response's description); the other statuses are Schemathesis' defaults.
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]

# A served chat request writes an answer with SmolLM2 (seconds each on two cores): fewer of
# them, and no boundary-value (coverage) phase for valid chats; refused ones cost nothing.
[[operations]]
include-path = "/v1/chat"
[operations.generation]
max-examples = 3
"""

CHAT_POSITIVE_COVERAGE_OFF = """
[operations.phases.coverage]
enabled = false
"""


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_failure(
    demo_server: ServeProcess, tmp_path: Path, mode: str
) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    config = tmp_path / "schemathesis.toml"
    extra = CHAT_POSITIVE_COVERAGE_OFF if mode == "positive" else ""
    config.write_text(CONFIG + extra, encoding="utf-8")
    report = tmp_path / "report"
    args = [
        exe,
        "--config-file",
        str(config),
        "run",
        f"{demo_server.url}/openapi.json",
        "--mode",
        mode,
        "--checks",
        "all",
        "--exclude-checks",
        NOT_APPLICABLE,
        "--max-response-time",
        "600",
        "--generation-codec",
        "utf-8",
        "--max-examples",
        "8",
        "--seed",
        "20261205",
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--request-timeout",
        "120",
        "--header",
        f"Authorization: Bearer {API_KEY}",
        "--report",
        "junit",
        "--report-dir",
        str(report),
        "--warnings",
        "off",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "NO_COLOR": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    done = subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=1700, cwd=tmp_path, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-12000:]
    # It really tested every operation (a schema that failed to load tests nothing).
    suites = ElementTree.parse(next(report.glob("junit*.xml"))).getroot()
    tested = {case.get("name") for case in suites.iter("testcase")}
    assert {"POST /v1/retrieve", "POST /v1/rerank", "POST /v2/rerank", "POST /v1/chat"} <= tested
