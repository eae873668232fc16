"""The package's OpenMP default: idle threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the
environment says otherwise, set before torch first loads (benchmarks/bench_threads.py measured
spinning threads collapsing on a shared CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import os; from llamaindex_rerankers._imports import require; require('torch'); "
    "print(os.environ.get('OMP_WAIT_POLICY'))"
)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_torch_loads_with_a_passive_openmp_wait_policy_unless_one_is_set(
    given: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == expected
