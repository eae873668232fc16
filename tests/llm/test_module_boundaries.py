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


def test_the_judging_engine_sits_below_the_reranker_class() -> None:
    # llm/judging.py is the per-call engine: the reranker class builds its setup and calls it,
    # never the other way round, and it talks to the endpoint through the ChatClient protocol
    # (the LlamaIndex client only to tell whose events are whose), not through openai.
    names = imported(PACKAGE / "llm" / "judging.py")
    assert "llamaindex_rerankers.llm.reranker" not in names
    assert "llamaindex_rerankers.llm.openai_client" not in names
    assert "llamaindex_rerankers.llm.judging" in imported(PACKAGE / "llm" / "reranker.py")


# -- the floors: library below, applications above ---------------------------------------------

#: The applications: they import the library, never the other way round.
APPLICATIONS = ("cli", "server", "evaluation")
#: Kept for older imports only: each re-exports a module that moved up into ``cli`` (or, for
#: ``server/__main__.py``, is the process entry point that runs the cli's ``serve``). Nothing in
#: the package imports them (checked below), so they add no edge a caller could follow.
COMPAT_UP = {
    "server/command.py": "llamaindex_rerankers.cli.serve",
    "evaluation/command.py": "llamaindex_rerankers.cli.evaluate",
    "server/__main__.py": "llamaindex_rerankers.cli",
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """The top-level part of the package a module belongs to: ``llm``, ``cli``, ``base`` ..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the package's modules it imports (read with ``ast``, lazy imports included;
    ``from package import module`` counts as importing the module)."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = str(path.relative_to(root))
        if rel in COMPAT_UP:
            continue
        targets: set[str] = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        graph[module_name(path, root)] = {
            t
            for t in targets
            if t == "llamaindex_rerankers" or t.startswith("llamaindex_rerankers.")
        }
    known = set(graph) | {module_name(root / p, root) for p in COMPAT_UP}
    # keep only names that are modules (``from x import Name`` adds x.Name, a symbol)
    return {m: {t for t in ts if t in known} for m, ts in graph.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for each library module that imports an application, and each application
    that imports another application (they meet only through the library)."""
    found = []
    for module, targets in graph.items():
        source = package_of(module)
        for target in targets:
            dest = package_of(target)
            if dest in APPLICATIONS and dest != source and source != "cli":
                found.append(f"{module} -> {target}")
    return sorted(found)


def package_cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of top-level parts of the package that import each other (at any module)."""
    edges = {
        (package_of(m), package_of(t))
        for m, ts in graph.items()
        for t in ts
        if package_of(m) != package_of(t) and package_of(m) and package_of(t)
    }
    return sorted((a, b) for a, b in edges if (b, a) in edges and a < b)


def test_no_import_runs_back_up_a_floor() -> None:
    # The library never imports cli, server or evaluation; server and evaluation never import
    # cli (or each other). Only cli, the command line, may import every floor below it.
    assert upward_imports(import_graph()) == []


def test_no_cycle_between_parts_of_the_package() -> None:
    # e.g. llm re-exports the launcher (llm.local_llm_server), so endpoints must not import llm.
    assert package_cycles(import_graph()) == []


def test_the_cross_encoder_does_not_depend_on_the_llm_package() -> None:
    for name in ("cross_encoder.py", "cross_encoder_backends.py", "injection.py", "windows.py"):
        names = imported(PACKAGE / name)
        assert not any(n.startswith("llamaindex_rerankers.llm") for n in names), name


def test_the_compatibility_modules_are_not_imported_inside_the_package() -> None:
    shims = {module_name(PACKAGE / p) for p in COMPAT_UP}
    shims |= {
        "llamaindex_rerankers.llm.server",
        "llamaindex_rerankers.llm.detector",
        "llamaindex_rerankers.llm.injection",
        "llamaindex_rerankers.llm.endpoint",
        "llamaindex_rerankers.cli.reranker_options",
        "llamaindex_rerankers.evaluation.anchors",
    }
    users = {
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if target in shims
    }
    assert users == set()
    # Each compatibility module re-exports the module it names, and only that.
    for rel, target in COMPAT_UP.items():
        assert target in imported(PACKAGE / rel), rel


def test_the_graph_reader_sees_a_forbidden_import(tmp_path: Path) -> None:
    # The checks above must be able to fail: a library module importing cli, and a cycle.
    root = tmp_path / "llamaindex_rerankers"
    (root / "cli").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "cli" / "__init__.py").write_text("from llamaindex_rerankers import base\n")
    (root / "base.py").write_text("def f():\n    from llamaindex_rerankers.cli import main\n")
    graph = import_graph(root)
    assert upward_imports(graph) == ["llamaindex_rerankers.base -> llamaindex_rerankers.cli"]
    assert package_cycles(graph) == [("base", "cli")]


def test_the_http_layer_serves_both_rerankers_and_depends_on_neither() -> None:
    # http/ (retries, the background loop) is shared by the LLM client and the rerank service
    # client: it imports neither, so neither drags the other in.
    for path in (PACKAGE / "http").rglob("*.py"):
        names = imported(path)
        assert not any(
            n.startswith(("llamaindex_rerankers.llm", "llamaindex_rerankers.remote")) for n in names
        ), path


def test_one_retry_mechanism() -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(name == "tenacity" or name.startswith("tenacity.") for name in imported(path))
    }
    assert importers == {"http/retry.py"}
