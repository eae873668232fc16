"""The LLM layer's doors: only openai_client.py imports openai; the data types, the retry maths
and the label maths import no client at all (read from the source, so lazy imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

import llamaindex_rerankers

PACKAGE = Path(llamaindex_rerankers.__file__).parent
CLIENTS = {"llamaindex_rerankers.llm.openai_client", "llamaindex_rerankers.llm.llamaindex_client"}


def imported(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` / ``require("...")`` (the package's lazy
    import) in the file names, at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "require"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def test_only_the_openai_client_imports_openai() -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(name == "openai" or name.startswith("openai.") for name in imported(path))
    }
    assert importers == {"llm/openai_client.py"}


def test_pure_modules_import_no_client() -> None:
    for name in ("types.py", "retry.py", "labels.py", "capabilities.py", "cache.py"):
        names = imported(PACKAGE / "llm" / name)
        assert not names & CLIENTS, f"llm/{name} imports a client: {names & CLIENTS}"
        assert not any(n.startswith("openai") for n in names), name
