"""The notebooks' code runs top to bottom (as a plain script: no Jupyter needed in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def code_of(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs(notebook: Path, data_dir: Path, ce_model_path: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LLAMAINDEX_RERANKERS_DATA": str(data_dir),
        "LLAMAINDEX_RERANKERS_CROSS_ENCODER": ce_model_path,
        "NOTEBOOK_QUERIES": "3",  # a slice: this checks the code, not the numbers
        "MPLBACKEND": "Agg",
    }
    script = tmp_path / f"{notebook.stem}.py"
    script.write_text(code_of(notebook), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| reranker | top_k | nDCG@10 |" in done.stdout
    assert "of 3 queries" in done.stdout
    assert (tmp_path / "compare_rerankers.png").read_bytes()[:4] == b"\x89PNG"
