"""The ``llamaindex-rerankers`` command line, run as a real subprocess on real models and Chroma.

Every subprocess that loads a model costs seconds, so each one checks as much as it can; input
errors that are caught before any model loads are also checked in-process through ``main``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers.cli import main
from llamaindex_rerankers.demo import DEMO_QUESTIONS, sample_corpus_dir
from llamaindex_rerankers.pipeline import RetrievalResult
from llamaindex_rerankers.presentation import (
    Comparison,
    RankedSource,
    format_comparison,
    format_sources,
    ranked_sources,
    retrieval_sources,
)
from llamaindex_rerankers.registry import RERANKER_NAMES, make_anchor, make_reranker

GUIDE = "pruning-apple-trees.md"
# The guide and the confusers the issue names: shears, Apple Inc., apple pie, pear trees, ...
SUBSET = [
    GUIDE,
    "pruning-shears-review.md",
    "apple-stock-earnings.md",
    "apple-pie-recipe.md",
    "pruning-pear-trees.md",
    "pruning-decision-trees.md",
    "apple-prunes-product-line.md",
    "iphone-review.md",
    "cherry-tree-care.md",
    "pruning-roses.md",
]
QUESTION = "best practices for pruning apple trees"


def _command() -> list[str]:
    script = Path(sys.executable).parent / "llamaindex-rerankers"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "llamaindex_rerankers.cli"]


@pytest.fixture(scope="module")
def cli_env(ce_model_path: str, embed_model_path: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LLAMAINDEX_RERANKERS_CROSS_ENCODER=ce_model_path,
        LLAMAINDEX_RERANKERS_EMBED_MODEL=embed_model_path,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        ANONYMIZED_TELEMETRY="False",
        COLUMNS="100",
    )
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, cli_env: dict[str, str]) -> Path:
    """A Chroma folder holding the guide and its confusers, built by ``index``."""
    docs = tmp_path_factory.mktemp("docs")
    for name in SUBSET:
        shutil.copy(sample_corpus_dir() / name, docs / name)
    persist = tmp_path_factory.mktemp("chroma")
    proc = run_cli(cli_env, "index", str(docs), "--persist-dir", str(persist))
    assert proc.returncode == 0, proc.stderr
    assert f"{len(SUBSET)} added, 0 updated, 0 removed, 0 unchanged" in proc.stdout
    assert f"{len(SUBSET)} chunks in the collection" in proc.stdout
    assert "Embedding chunks" in proc.stderr  # the progress bar
    return persist


# -- the sample corpus ----------------------------------------------------------------------


def test_sample_corpus_is_shipped_and_well_formed() -> None:
    files = sorted(sample_corpus_dir().glob("*.md"))
    assert 25 <= len(files) <= 40
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert re.match(r"# \S", text.splitlines()[0]), f.name
        words = len(text.split())
        assert 80 <= words <= 200, (f.name, words)
    assert set(SUBSET) <= {f.name for f in files}


# -- registry -------------------------------------------------------------------------------


def test_registry_builds_rerankers_by_name() -> None:
    assert RERANKER_NAMES[:2] == ("none", "cross-encoder")
    assert make_reranker("none") is None
    reranker = make_reranker("cross-encoder", top_n=3, batch_size=4, model="some/model")
    assert type(reranker).__name__ == "CrossEncoderReranker"
    assert (reranker.top_n, reranker.batch_size, reranker.model) == (3, 4, "some/model")
    with pytest.raises(ValueError, match=r"unknown reranker 'bm25'.*none, cross-encoder"):
        make_reranker("bm25")
    with pytest.raises(ValueError, match="takes no options"):
        make_reranker("none", model="x")


def test_registry_builds_the_llm_rerankers_and_anchors_on_one_endpoint() -> None:
    # what LLMEndpoint.reranker_options() gives for a local server, namespace included
    endpoint = {"llm_base_url": "http://127.0.0.1:9/v1", "llm_model": "m", "llm_api_key": "k",
                "llm_cache_namespace": "gguf-sha256:abc"}  # fmt: skip
    llm = make_reranker("llm", top_n=4, **endpoint)
    assert type(llm).__name__ == "LLMReranker"
    assert (llm.top_n, llm.base_url, llm.model) == (4, "http://127.0.0.1:9/v1", "m")
    assert llm.cache_namespace == "gguf-sha256:abc"
    cascade = make_reranker("cascade", top_n=2, keep=5, cross_encoder_model="ce/x", **endpoint)
    assert type(cascade).__name__ == "CascadeReranker"
    assert (cascade.keep, cascade.first.model, cascade.second.base_url) == (
        5,
        "ce/x",
        "http://127.0.0.1:9/v1",
    )
    anchors = (
        ("llmrerank", "LLMRerank"),
        ("structuredllmrerank", "StructuredLLMRerank"),
        ("rankgpt", "RankGPTRerank"),
    )
    for name, cls in anchors:
        anchor = make_anchor(name, top_n=3, **endpoint)
        assert (type(anchor).__name__, anchor.top_n) == (cls, 3)
        assert anchor.llm.api_base == "http://127.0.0.1:9/v1"
        with pytest.raises(ValueError, match="llm_base_url and llm_model"):
            make_anchor(name, top_n=3)
        # make_reranker builds only ours; the anchors are built by make_anchor.
        with pytest.raises(ValueError, match=f"unknown reranker {name!r}"):
            make_reranker(name, top_n=3, **endpoint)
    assert RERANKER_NAMES == ("none", "cross-encoder", "llm", "cascade", "remote")


# -- presentation (pure) --------------------------------------------------------------------


def _nodes(titles: list[str], scores: list[float]) -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(id_=f"{t}#0", text=f"# {t}\n\nAbout {t}."), score=s)
        for t, s in zip(titles, scores, strict=True)
    ]


def test_ranked_sources_carry_first_stage_ranks_and_scores() -> None:
    retrieved = _nodes(["A", "B", "C"], [0.9, 0.8, 0.7])
    reranked = [
        NodeWithScore(
            node=retrieved[i].node.model_copy(update={"metadata": {"rerank_score": s}}), score=s
        )
        for i, s in [(2, 0.95), (0, 0.5)]
    ]
    result = RetrievalResult(query="q", retrieved=retrieved, reranked=reranked)
    got = ranked_sources(result)
    assert [(s.rank, s.title, s.retrieval_rank) for s in got] == [(1, "C", 3), (2, "A", 1)]
    assert [(s.retrieval_score, s.rerank_score) for s in got] == [(0.7, 0.95), (0.9, 0.5)]
    assert got[0].snippet() == "About C."
    assert [s.rank for s in ranked_sources(result, top_n=1)] == [1]
    left = retrieval_sources(result)
    assert [(s.title, s.rerank_score) for s in left] == [("A", 0.5), ("B", None), ("C", 0.95)]

    # No reranker: the retrieval order, no rerank score.
    plain = ranked_sources(RetrievalResult(query="q", retrieved=retrieved, reranked=retrieved))
    assert [(s.rank, s.retrieval_rank, s.rerank_score) for s in plain] == [
        (1, 1, None),
        (2, 2, None),
        (3, 3, None),
    ]


def test_formatters_fit_100_columns() -> None:
    long = "A Very Long Title About Pruning Apple Trees In Every Season Of The Year"
    left = [RankedSource(i, f"n{i}", f"{long} {i}", "x " * 200, i, 0.5, None) for i in (1, 2, 3)]
    right = [RankedSource(r, f"n{i}", f"{long} {i}", "", i, 0.5, 1 - r / 10) for r, i in [(1, 3)]]
    table = format_comparison(Comparison("why?", left, right))
    lines = table.splitlines()
    assert lines[0] == "Q: why?"
    assert all(len(line) <= 100 for line in lines), max(map(len, lines))
    assert len(lines) == 3 + 3  # question, header, rule, one row per retrieved source
    assert "(#3)" in lines[3] and "0.900" in lines[3]
    sources = format_sources(left, answer="Prune in winter.")
    assert sources.startswith("Answer:\nPrune in winter.\n\nSources:\n")
    assert all(len(line) <= 100 for line in sources.splitlines())
    assert format_sources([]).endswith("(no sources)")


def test_an_outage_is_shown_as_a_failed_rerank_not_as_an_abstention() -> None:
    left = [RankedSource(1, "n1", "Pruning", "text", 1, 0.5, None)]
    failed = format_comparison(Comparison("q", left, left, rerank_failed=True))
    assert "could not judge any source" in failed and "abstain" not in failed
    abstained = format_comparison(Comparison("q", left, left, abstained=True))
    assert "-> abstain: no source is relevant" in abstained


def test_answer_hook_puts_the_reranked_sources_in_the_prompt() -> None:
    from llama_index.core.llms import MockLLM

    from llamaindex_rerankers.cli.commands import _answer

    # MockLLM echoes its prompt: the answer shows what the synthesizer sent to the LLM.
    answer = _answer(MockLLM(), "how to prune?", _nodes(["Pruning Guide"], [0.9]))
    assert "About Pruning Guide." in answer and "how to prune?" in answer


# -- input errors (no model is loaded before these are caught) ----------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["query", "q", "--persist-dir", "D", "--top-k", "3", "--top-n", "5"], "raise --top-k"),
        (["query", "q"], "--persist-dir D"),
        (["query", "  ", "--persist-dir", "D"], "QUESTION is empty"),
        (["query", "q", "--persist-dir", "D", "--reranker", "bm25"], "invalid choice: 'bm25'"),
        (["query", "q", "--persist-dir", "D", "--top-k", "0"], "must be at least 1"),
        (["query", "q", "--chroma-host", "h", "--chroma-port", "99999"], "1..65535"),
        (["index", "/no/such/folder", "--persist-dir", "D"], "is not a folder"),
        (["index", ".", "--persist-dir", "D", "--chunk-overlap", "600"], "--chunk-size"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / "missing") if a == "D" else a for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err
    assert not (tmp_path / "missing").exists()  # nothing was created on the way


def test_missing_index_through_the_console_script(tmp_path: Path, cli_env: dict[str, str]) -> None:
    missing = tmp_path / "no-index-here"
    line = _one_line_error(run_cli(cli_env, "query", QUESTION, "--persist-dir", str(missing)))
    assert "no index at --persist-dir" in line and "llamaindex-rerankers index PATH" in line
    assert not missing.exists()


@pytest.mark.slow
def test_missing_cross_encoder_names_the_env_var(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(cli_env, LLAMAINDEX_RERANKERS_CROSS_ENCODER=str(tmp_path / "no-such-model"))
    line = _one_line_error(run_cli(env, "demo", "--persist-dir", str(tmp_path / "db")))
    assert "LLAMAINDEX_RERANKERS_CROSS_ENCODER" in line and "no-such-model" in line
    assert "--cross-encoder-model" in line
    # It fails before anything is indexed.
    assert not (tmp_path / "db").exists()


# -- index + query on real models and a real embedded Chroma ------------------------------------


@pytest.mark.slow
def test_query_json_reranks_the_guide_first(indexed: Path, cli_env: dict[str, str]) -> None:
    base = ["query", QUESTION, "--persist-dir", str(indexed), "--top-k", "6", "--json"]
    reranked_proc = run_cli(cli_env, *base, "--top-n", "4", "--reranker", "cross-encoder")
    plain_proc = run_cli(cli_env, *base, "--top-n", "6", "--reranker", "none")
    for proc in (reranked_proc, plain_proc):
        assert proc.returncode == 0, proc.stderr
    reranked: list[dict[str, Any]] = json.loads(reranked_proc.stdout)
    plain: list[dict[str, Any]] = json.loads(plain_proc.stdout)

    for source in reranked + plain:
        assert {"id", "rerank_score", "retrieval_rank", "retrieval_score", "text"} <= set(source)
    assert len(reranked) == 4 and len(plain) == 6

    # The cross-encoder puts the real guide first, whatever retrieval did.
    assert reranked[0]["id"].startswith(GUIDE)
    assert reranked[0]["text"].startswith("# Pruning Apple Trees")
    scores = [s["rerank_score"] for s in reranked]
    assert all(0.0 <= x <= 1.0 for x in scores)
    assert scores == sorted(scores, reverse=True)
    ranks = [s["retrieval_rank"] for s in reranked]
    assert len(set(ranks)) == len(ranks) and set(ranks) <= set(range(1, 7))

    # --reranker none keeps the retrieval order: ranks 1..6, similarity descending.
    assert [s["retrieval_rank"] for s in plain] == list(range(1, 7))
    assert all(s["rerank_score"] is None for s in plain)
    similarity = [s["retrieval_score"] for s in plain]
    assert similarity == sorted(similarity, reverse=True)
    # Both runs see the same first stage: each reranked source's retrieval rank points at it.
    for s in reranked:
        first_stage = plain[s["retrieval_rank"] - 1]
        assert first_stage["id"] == s["id"]
        assert first_stage["retrieval_score"] == pytest.approx(s["retrieval_score"], abs=1e-6)


@pytest.mark.slow
def test_query_on_a_missing_collection_is_an_input_error(
    indexed: Path, cli_env: dict[str, str]
) -> None:
    proc = run_cli(
        cli_env, "query", QUESTION, "--persist-dir", str(indexed), "--collection", "nothing-here"
    )
    line = _one_line_error(proc)
    assert "no index" in line and "nothing-here" in line and "llamaindex-rerankers index" in line


# -- the demo -------------------------------------------------------------------------------


def _table_rows(block: str) -> list[tuple[str, str]]:
    rows = []
    for line in block.splitlines()[3:]:
        if line.startswith("-> abstain"):
            continue
        left, _, right = line.partition(" | ")
        rows.append((left, right))
    return rows


@pytest.mark.slow
def test_demo_shows_both_orders_and_abstains_off_topic(cli_env: dict[str, str]) -> None:
    proc = run_cli(cli_env, "demo", "--top-k", "6")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    n_docs = len(list(sample_corpus_dir().glob("*.md")))
    assert f"{n_docs} added, 0 updated, 0 removed, 0 unchanged; {n_docs} chunks" in out
    blocks = [b for b in out.split("\n\n") if b.startswith("Q: ")]
    assert [b.splitlines()[0][3:] for b in blocks] == list(DEMO_QUESTIONS)
    assert len(DEMO_QUESTIONS) == 4
    for block in blocks:
        assert all(len(line) <= 100 for line in block.splitlines())
        header = block.splitlines()[1]
        assert "retrieval" in header and "reranked" in header
        rows = _table_rows(block)
        assert len(rows) == 6
        left_scores = [float(left.split()[-1]) for left, _ in rows]
        assert left_scores == sorted(left_scores, reverse=True)
        was = [int(right.rsplit("(#", 1)[1].rstrip(")")) for _, right in rows]
        assert sorted(was) == list(range(1, 7))  # the same candidates, reordered
        right_scores = [float(right.split()[-2]) for _, right in rows]
        assert right_scores == sorted(right_scores, reverse=True)
    # The classic question: the cross-encoder's first pick is the real pruning guide.
    first_right = _table_rows(blocks[0])[0][1]
    assert "Pruning Apple Trees" in first_right
    # Only the off-topic last question (timing belts) has no relevant source.
    assert ["-> abstain" in b for b in blocks] == [False, False, False, True]
    assert "Traceback" not in proc.stderr


# -- answers through a custom endpoint (--llm-base-url) -------------------------------------------


def test_answer_follows_llm_base_url_unless_no_answer() -> None:
    from llamaindex_rerankers.cli.commands import wants_answer
    from llamaindex_rerankers.cli.parser import build_parser

    base = ["query", "q", "--persist-dir", "D"]
    url = ["--llm-base-url", "http://127.0.0.1:9/v1"]
    parse = build_parser().parse_args
    assert wants_answer(parse(base)) is False
    assert wants_answer(parse([*base, "--answer"])) is True
    assert wants_answer(parse([*base, *url])) is True  # documented: the URL implies --answer
    assert wants_answer(parse([*base, *url, "--no-answer"])) is False
    assert wants_answer(parse([*base, *url, "--json"])) is False


@pytest.mark.slow
def test_an_unreachable_answer_endpoint_is_one_line_and_no_answer_reranks_only(
    indexed: Path, cli_env: dict[str, str]
) -> None:
    base = ["query", QUESTION, "--persist-dir", str(indexed), "--top-k", "4", "--top-n", "2"]
    down = ["--llm-base-url", "http://127.0.0.1:9/v1", "--llm-model", "m"]
    line = _one_line_error(run_cli(cli_env, *base, *down))
    assert "answer" in line and "http://127.0.0.1:9/v1" in line and "--no-answer" in line
    proc = run_cli(cli_env, *base, *down, "--no-answer")
    assert proc.returncode == 0, proc.stderr
    assert "Answer:" not in proc.stdout and proc.stdout.lstrip().startswith("#  rerank")
    assert "Pruning Apple Trees" in proc.stdout


# -- help, defaults and --version ---------------------------------------------------------------


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_every_default_and_the_question(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["eval", "--help"], capsys)
    for default in (
        "(default: 20)",  # --top-k
        "(default: 10)",  # --top-n
        "(default: bm25-run)",  # --first-stage
        "(default: none,cross-encoder)",  # --reranker
    ):
        assert default in text, default
    text = _help(["query", "--help"], capsys)
    assert re.search(r"QUESTION +what to ask", text), text
    assert "--no-answer" in text


def test_version_comes_from_the_package_metadata(
    capsys: pytest.CaptureFixture[str], cli_env: dict[str, str]
) -> None:
    from importlib.metadata import version

    assert _help(["--version"], capsys) == f"llamaindex-rerankers {version('llamaindex-rerankers')}"
    proc = run_cli(cli_env, "--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, _help(["--version"], capsys))
