"""Importing the package must stay light: heavy dependencies load on first use only."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "chromadb", "openai", "sentence_transformers", "transformers", "llama_cpp")


def test_import_does_not_load_heavy_dependencies() -> None:
    code = (
        "import sys, llamaindex_rerankers, llamaindex_rerankers.cli, "
        "llamaindex_rerankers.pipeline, llamaindex_rerankers.evaluation.harness; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
