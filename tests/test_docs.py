"""The documentation: the site builds strictly, documents every public name, and its examples
are Python that compiles (and runs, where marked and cheap); the README works as a PyPI page.

The strict build is the one `make docs` runs: a warning, a broken internal link or anchor, or a
reference mkdocstrings cannot resolve fails it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import llamaindex_rerankers

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
README = REPO / "README.md"
PACKAGE = "llamaindex_rerankers"


def public_packages() -> list[str]:
    """The package and each public subpackage (no leading underscore) that declares ``__all__``."""
    names = [PACKAGE]
    for info in pkgutil.iter_modules(llamaindex_rerankers.__path__, PACKAGE + "."):
        short = info.name.rsplit(".", 1)[1]
        if info.ispkg and not short.startswith("_"):
            names.append(info.name)
    return [n for n in names if hasattr(importlib.import_module(n), "__all__")]


def read_inventory(path: Path) -> set[str]:
    """The object names in a Sphinx ``objects.inv`` (version 2), as mkdocstrings writes it."""
    raw = path.read_bytes()
    lines = raw.split(b"\n", 4)
    assert lines[0].startswith(b"# Sphinx inventory version 2"), lines[0]
    body = zlib.decompress(lines[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if line.strip()}


def resolve(path: str) -> Any:
    """The object a dotted inventory name refers to, or a sentinel when it does not import."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return _MISSING
        return obj
    return _MISSING


_MISSING = object()


def undocumented(inventory: set[str], packages: list[str]) -> list[str]:
    """``package.name`` for every name in a public ``__all__`` that the reference lacks.

    A name passes when ``package.name`` is in the inventory, or when the same object is
    documented under another public path (``llamaindex_rerankers.llm.LLMReranker`` is documented
    once, as ``llamaindex_rerankers.LLMReranker``).
    """
    documented_ids = {
        id(obj)
        for name in inventory
        if name.startswith(PACKAGE) and (obj := resolve(name)) is not _MISSING
    }
    missing = []
    for pkg in packages:
        module = importlib.import_module(pkg)
        for name in module.__all__:
            if f"{pkg}.{name}" in inventory:
                continue
            obj = getattr(module, name)
            # ids of small ints and interned strings are shared: only classes and functions
            # count as "the same object documented elsewhere".
            if callable(obj) and id(obj) in documented_ids:
                continue
            missing.append(f"{pkg}.{name}")
    return missing


def build_site(out: Path, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    if config is not None:
        cmd += ["--config-file", str(config)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = build_site(out)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


# -- the site -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_site_builds_strictly_with_every_section(site: Path) -> None:
    for page in [
        "getting-started",
        "guides/query-engines",
        "guides/llm-reranker",
        "guides/serving",
        "guides/evaluation",
        "benchmarks/evaluation",
        "notebooks/01_quickstart",
        "api/llamaindex_rerankers",
    ]:
        assert (site / page / "index.html").is_file(), page
    # A notebook page carries its committed outputs (the reranked sources table, a plot).
    quickstart = (site / "notebooks/01_quickstart/index.html").read_text()
    assert "retrieval" in quickstart and "<table" in quickstart


@pytest.mark.slow
def test_every_public_name_is_in_the_api_reference(site: Path) -> None:
    inventory = read_inventory(site / "objects.inv")
    packages = public_packages()
    assert {PACKAGE, f"{PACKAGE}.llm", f"{PACKAGE}.pipeline"} <= set(packages)
    assert undocumented(inventory, packages) == []


def test_each_public_package_has_an_api_page() -> None:
    pages = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    missing = [pkg for pkg in public_packages() if f"::: {pkg}\n" not in pages]
    assert missing == [], f"add docs/api/<name>.md with '::: <package>' for {missing}"


def test_the_check_names_what_the_reference_lacks() -> None:
    # The check above can fail: an inventory without CrossEncoderReranker is caught.
    assert undocumented({"llamaindex_rerankers.BaseReranker"}, [PACKAGE]) != []
    listed = {f"{PACKAGE}.{n}" for n in llamaindex_rerankers.__all__}
    assert undocumented(listed - {f"{PACKAGE}.CrossEncoderReranker"}, [PACKAGE]) == [
        f"{PACKAGE}.CrossEncoderReranker"
    ]


# -- code blocks --------------------------------------------------------------------------------

FENCE = re.compile(r"(?P<marker><!-- run -->\n)?^```python\n(?P<code>.*?)^```", re.M | re.S)


def python_blocks() -> list[tuple[str, str, bool]]:
    """(where, code, run?) for every ```python block of the README and docs/."""
    files = [README, *sorted(DOCS.rglob("*.md"))]
    blocks = []
    for path in files:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start("code"))
            where = f"{path.relative_to(REPO)}:{line}"
            blocks.append((where, m.group("code"), m.group("marker") is not None))
    return blocks


BLOCKS = python_blocks()


def test_there_are_python_examples_to_check() -> None:
    assert len(BLOCKS) >= 15
    assert any(run for _w, _c, run in BLOCKS)


@pytest.mark.parametrize(("where", "code", "run"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_python_examples_compile_and_marked_ones_run(where: str, code: str, run: bool) -> None:
    compiled = compile(code, where, "exec")
    if run:  # marked <!-- run -->: needs no server, model or network
        exec(compiled, {"__name__": "__docs_example__"})


# -- the README as the PyPI page ----------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)|<(https?://[^>]+)>")


def test_readme_links_are_absolute_so_they_work_on_pypi() -> None:
    targets = [a or b for a, b in LINK.findall(README.read_text())]
    assert targets
    relative = [t for t in targets if not t.startswith(("https://", "http://"))]
    assert relative == []


def test_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.encode()) <= 10 * 1024, "the README is the front page; move detail to docs/"
    assert "make demo" in text and "make test" in text
    assert "download.pytorch.org/whl/cpu" in text  # how to get CPU-only torch


def test_readme_headline_table_is_the_committed_result() -> None:
    rows = json.loads((REPO / "benchmarks/results/llm_quality.json").read_text())["rows"]
    score = {(r["contestant"], r["dataset"]): r["nDCG@10"] for r in rows}
    names = {
        "BM25 (first stage)": "none",
        "`CrossEncoderReranker`": "cross-encoder",
        "`LLMReranker` (defaults)": "llm",
        "`CascadeReranker` (keep 6)": "cascade",
    }
    table = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] in names:
            table[names[cells[0]]] = cells[1:4]
    assert set(table) == set(names.values())
    for contestant, cells in table.items():
        datasets = ("trec-dl-2019", "scifact", "nfcorpus")
        expected = [f"{score[contestant, ds]:.4f}" for ds in datasets]
        assert cells == expected, contestant


def test_the_license_is_apache_2_and_packaged() -> None:
    assert (REPO / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    # tomllib is 3.11+, and the package supports 3.10: read the two lines as text
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in pyproject
    assert 'license-files = ["LICENSE"]' in pyproject


# -- the Benchmarks pages -----------------------------------------------------------------------


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_benchmarks", DOCS / "gen_benchmarks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_results_file_is_on_a_benchmarks_page_with_its_command() -> None:
    gen = load_generator()
    pages = gen.build_pages()
    text = "\n".join(pages.values())
    for path in sorted((REPO / "benchmarks/results").glob("*.json")):
        assert f"{{#{gen.slug(path.stem)}}}" in text, path.name
    assert text.count("Made by:") == len(list((REPO / "benchmarks/results").glob("*.json")))
    # a results file no page takes stops the build
    with pytest.raises(SystemExit, match="no Benchmarks page shows"):
        gen.assign(["llm_quality", "a_new_benchmark"])


def committed_figures() -> set[str]:
    """Every float in benchmarks/results (subfolders included), to 4 decimals."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, float):
            found.add(f"{value:.4f}")

    for path in (REPO / "benchmarks/results").rglob("*.json"):
        walk(json.loads(path.read_text()))
    return found


FIGURE = re.compile(r"(?<![\d.])(0\.\d{4})(?!\d)")


def test_figures_in_hand_written_tables_are_committed_results() -> None:
    # The guides and the README summarise results in their own tables; each 4-decimal figure
    # there (nDCG@10, RR, R ...) must be one that a results file holds.
    figures = committed_figures()
    stray = []
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("|"):
                stray += [
                    f"{path.relative_to(REPO)}:{number}: {f}"
                    for f in FIGURE.findall(line)
                    if f not in figures
                ]
    assert stray == []
