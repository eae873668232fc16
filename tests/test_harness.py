"""The evaluation harness: side-by-side runs on the same candidates, scored by hand."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import PrivateAttr
from table_reranker import TableReranker

from llamaindex_rerankers.base import Judgement, RerankReport
from llamaindex_rerankers.evaluation.data import Dataset, Run, load_beir, load_trec_run
from llamaindex_rerankers.evaluation.harness import (
    QueryOutcome,
    RerankerRun,
    RunFileStage,
    default_measures,
    markdown_table,
    plot_against_k,
    run_rerankers,
    score_runs,
)
from llamaindex_rerankers.evaluation.metrics import evaluate


def write_dataset(root: Path) -> Path:
    """Two queries, four docs. q1: d2 relevant; q2: d1 (grade 1) and d4 (grade 2)."""
    (root / "qrels").mkdir(parents=True)
    (root / "runs").mkdir()
    docs = {"d1": "one", "d2": "two", "d3": "three", "d4": "four"}
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items())
    )
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "first"})
        + "\n"
        + json.dumps({"_id": "q2", "text": "second"})
        + "\n"
    )
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td1\t1\nq2\td4\t2\n"
    )
    (root / "runs" / "bm25_top100.trec").write_text(
        "q1 Q0 d1 1 3.0 bm25\nq1 Q0 d2 2 2.0 bm25\nq1 Q0 d3 3 1.0 bm25\n"
        "q2 Q0 d3 1 3.0 bm25\nq2 Q0 d1 2 2.0 bm25\nq2 Q0 d4 3 1.0 bm25\n"
    )
    return root


class DropsAll(BaseNodePostprocessor):
    """An anchor-like postprocessor that loses every node (as LLMRerank can)."""

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return []


class Raises(BaseNodePostprocessor):
    """An anchor-like postprocessor that raises on the query "second" (as RankGPT does when its
    prompt overflows the LLM's context)."""

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is not None and query_bundle.query_str == "second":
            raise RuntimeError("context length exceeded")
        return list(reversed(nodes))


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Dataset, Run]:
    root = write_dataset(tmp_path / "tiny")
    return load_beir(root), load_trec_run(root / "runs" / "bm25_top100.trec")


def test_runs_share_candidates_and_are_scored_in_their_returned_order(
    tiny: tuple[Dataset, Run],
) -> None:
    dataset, run = tiny
    # Scores tie on purpose for q1 (d2, d3): the harness must keep the reranker's tie order.
    table = TableReranker(
        table={"one": 0.1, "two": 0.5, "three": 0.5, "four": 0.9},
        metadata_mode=MetadataMode.NONE,
    )
    runs = run_rerankers(
        dataset,
        RunFileStage(dataset, run),
        {"none": None, "table": table, "drops": DropsAll()},
        top_k=3,
        top_n=2,
        show_progress=False,
    )
    assert runs["none"].outcomes["q1"].ranking == ("d1", "d2")
    assert runs["table"].outcomes["q1"].ranking == ("d2", "d3")
    assert runs["table"].outcomes["q2"].ranking == ("d4", "d3")
    assert runs["drops"].outcomes["q1"].dropped == 2

    scored = {s.reranker: s for s in score_runs(dataset, runs, ["nDCG@10", "RR@10"])}
    # none: q1 relevant at rank 2 -> nDCG 1/log2(3); RR 0.5.
    #       q2 [d3, d1]: d1 (gain 1) at rank 2 -> DCG 1/log2(3); ideal [d4 (2), d1 (1)]
    #       -> IDCG 2 + 1/log2(3).
    l3 = math.log2(3)
    none_q1, none_q2 = 1 / l3, (1 / l3) / (2 + 1 / l3)
    assert scored["none"].per_query["q1"]["nDCG@10"] == pytest.approx(none_q1)
    assert scored["none"].per_query["q2"]["nDCG@10"] == pytest.approx(none_q2)
    assert scored["none"].measures["nDCG@10"] == pytest.approx((none_q1 + none_q2) / 2)
    # table: q1 [d2, d3] -> 1.0; q2 [d4, d3] -> 2 / (2 + 1/log2 3)
    assert scored["table"].per_query["q1"]["nDCG@10"] == pytest.approx(1.0)
    assert scored["table"].per_query["q2"]["nDCG@10"] == pytest.approx(2 / (2 + 1 / l3))
    assert scored["table"].measures["RR@10"] == pytest.approx(1.0)
    # A reranker that returns nothing scores 0 on every query instead of vanishing.
    assert scored["drops"].measures == {"nDCG@10": 0.0, "RR@10": 0.0}
    assert scored["drops"].totals["dropped"] == 4
    assert scored["table"].totals["calls"] == 6
    assert scored["table"].queries == 2


def test_counters_are_summed_over_queries_but_peaks_are_maxed(tiny: tuple[Dataset, Run]) -> None:
    dataset, _ = tiny
    run = RerankerRun("llm", top_k=3, top_n=None)
    for qid, calls, peak in (("q1", 2, 3), ("q2", 5, 2)):
        counters = {"calls": calls, "max_in_flight": peak}
        run.outcomes[qid] = QueryOutcome(qid, ("d1",), 3, 0.1, counters, dropped=0)
    (scored,) = score_runs(dataset, {"llm": run})
    assert scored.totals == {"dropped": 0.0, "calls": 7.0, "max_in_flight": 3.0}


def test_an_anchor_that_raises_returns_nothing_for_that_query_and_the_run_goes_on(
    tiny: tuple[Dataset, Run], caplog: pytest.LogCaptureFixture
) -> None:
    dataset, run = tiny
    runs = run_rerankers(
        dataset, RunFileStage(dataset, run), {"raises": Raises(), "none": None},
        top_k=3, top_n=None, show_progress=False,
    )  # fmt: skip
    outcomes = runs["raises"].outcomes
    assert outcomes["q1"].ranking == ("d3", "d2", "d1") and outcomes["q1"].counters["errors"] == 0
    assert outcomes["q2"].ranking == () and outcomes["q2"].counters["errors"] == 1
    assert outcomes["q2"].dropped == 3
    assert "Raises raised on query q2: context length exceeded" in caplog.text
    (scored, _) = score_runs(dataset, runs)
    assert scored.totals["errors"] == 1 and scored.per_query["q2"]["nDCG@10"] == 0.0


class Broken(TableReranker):
    """One of ours whose model cannot load."""

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        raise RuntimeError("model not found; pass model=")


def test_an_error_in_one_of_our_rerankers_stops_the_run(tiny: tuple[Dataset, Run]) -> None:
    dataset, run = tiny
    with pytest.raises(RuntimeError, match="model not found"):
        run_rerankers(
            dataset, RunFileStage(dataset, run), {"ours": Broken(table={})},
            top_k=3, top_n=None, show_progress=False,
        )  # fmt: skip


def test_default_measures_use_rel_2_on_graded_data(tiny: tuple[Dataset, Run]) -> None:
    dataset, _ = tiny
    assert default_measures(dataset, 5, 20) == ["nDCG@10", "RR(rel=2)@10", "R(rel=2)@5"]


def test_markdown_and_plot(tiny: tuple[Dataset, Run], tmp_path: Path) -> None:
    dataset, run = tiny
    scored = []
    for k in (1, 2, 3):
        runs = run_rerankers(
            dataset,
            RunFileStage(dataset, run),
            {"none": None},
            top_k=k,
            top_n=1,
            show_progress=False,
        )
        scored += score_runs(dataset, runs, ["nDCG@10"])
    table = markdown_table([s.row() for s in scored])
    assert table.splitlines()[0].startswith("| reranker | top_k | top_n | queries | nDCG@10")
    assert len(table.splitlines()) == 2 + 3
    png = plot_against_k(scored, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_command_end_to_end_on_a_five_query_slice(
    data_dir: Path, ce_model_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llamaindex_rerankers.cli import main

    out_json, out_png = tmp_path / "dl19.json", tmp_path / "dl19.png"
    code = main(
        [
            "eval",
            "--dataset",
            str(data_dir / "trec-dl-2019"),
            "--top-k",
            "5,10",
            "--top-n",
            "5",
            "--reranker",
            "none,cross-encoder",
            "--queries",
            "5",
            "--cross-encoder-model",
            ce_model_path,
            "--output",
            str(out_json),
            "--plot",
            str(out_png),
            "--no-progress",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    # The main figures only (no zero counters); every figure is in the JSON.
    header = (
        "| reranker | top_k | top_n | nDCG@10 | RR(rel=2)@10 | R(rel=2)@5 | latency_median_s "
        "| latency_p95_s |"
    )
    assert header in table.splitlines()
    assert "trec-dl-2019 (test, 5 queries), first stage bm25-run" in table
    record = json.loads(out_json.read_text())
    rows = {(r["reranker"], r["top_k"]): r for r in record["results"]}
    assert set(rows) == {("none", 5), ("none", 10), ("cross-encoder", 5), ("cross-encoder", 10)}
    assert all(r["queries"] == 5 and len(r["per_query"]) == 5 for r in rows.values())
    ce = rows[("cross-encoder", 5)]
    assert ce["total_ce_pairs"] == 25 and type(ce["total_ce_pairs"]) is int
    assert ce["load_s"] is not None and rows[("none", 5)]["load_s"] is None
    assert record["settings"]["cross_encoder_model"] == ce_model_path
    # "none" at K=5 and K=10 returns the same BM25 top 5: the same scores.
    assert rows[("none", 5)]["nDCG@10"] == rows[("none", 10)]["nDCG@10"]
    # The BM25 order of these 5 queries, scored independently through the metrics module.
    dataset = load_beir(data_dir / "trec-dl-2019")
    bm25 = load_trec_run(data_dir / "trec-dl-2019" / "runs" / "bm25_top100.trec")
    qids = dataset.query_ids(5)
    top5 = {q: bm25[q][:5] for q in qids}
    expected = evaluate(dataset.qrels, top5, ["nDCG@10"], qids)["nDCG@10"]
    assert rows[("none", 5)]["nDCG@10"] == pytest.approx(expected)
    assert rows[("cross-encoder", 10)]["latency_median_s"] > 0
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_eval_command_rejects_bad_input(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llamaindex_rerankers.cli import main

    assert main(["eval", "--dataset", str(data_dir / "nope")]) == 2
    assert main(["eval", "--dataset", str(data_dir / "scifact"), "--top-k", "x"]) == 2
    assert (
        main(["eval", "--dataset", str(data_dir / "scifact"), "--top-k", "5", "--top-n", "10"]) == 2
    )
    scifact = ["eval", "--dataset", str(data_dir / "scifact")]
    capsys.readouterr()
    assert main([*scifact, "--cascade-weight", "1.5"]) == 2
    assert "--cascade-weight" in capsys.readouterr().err
    assert main([*scifact, "--cascade-keep", "0"]) == 2
    assert "--cascade-keep: must be at least 1" in capsys.readouterr().err
    # Ours and LlamaIndex's anchors, checked before anything is loaded or started.
    assert main([*scifact, "--reranker", "none,bm25"]) == 2
    err = capsys.readouterr().err
    assert "unknown reranker 'bm25'" in err and "cascade, remote, sbert, llmrerank" in err


# -- the eval command's checks come before any work ------------------------------------------


@pytest.mark.parametrize(
    ("hidden", "extra_args"), [("ir_measures", []), ("matplotlib", ["--plot", "p.png"])]
)
def test_eval_names_a_missing_eval_extra_before_any_reranking(
    hidden: str,
    extra_args: list[str],
    tiny: tuple[Dataset, Run],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llamaindex_rerankers.cli import main

    monkeypatch.setitem(sys.modules, hidden, None)  # as if it were not installed
    # A cross-encoder that cannot load: reranking first would fail on it, not on the extra.
    argv = ["eval", "--dataset", str(tmp_path / "tiny"), "--reranker", "cross-encoder",
            "--cross-encoder-model", str(tmp_path / "no-model"), "--no-progress"]  # fmt: skip
    assert main([*argv, *extra_args]) == 2
    err = capsys.readouterr().err
    assert hidden in err and "llamaindex-rerankers[eval]" in err and "no-model" not in err


@pytest.mark.parametrize("queries", ["0", "-2", "x"])
def test_eval_queries_must_be_a_positive_integer(
    queries: str, tiny: tuple[Dataset, Run], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llamaindex_rerankers.cli import main

    argv = ["eval", "--dataset", str(tmp_path / "tiny"), "--queries", queries, "--no-progress"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--queries" in err and ("at least 1" in err or "integer" in err)


# -- latency is the reranking's, not the model loading's ---------------------------------------


class LoadsSlowly(TableReranker):
    """One of ours whose model loads on first use (as the cross-encoder's does), slowly."""

    _loaded: bool = PrivateAttr(default=False)

    def load(self) -> None:
        if not self._loaded:
            time.sleep(0.4)
            self._loaded = True

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        self.load()
        return super()._judge(query, texts, report)


def test_model_loading_is_timed_apart_from_the_queries(tiny: tuple[Dataset, Run]) -> None:
    dataset, run = tiny
    table = {"one": 0.1, "two": 0.5, "three": 0.5, "four": 0.9}
    runs = run_rerankers(
        dataset, RunFileStage(dataset, run), {"slow": LoadsSlowly(table=table), "none": None},
        top_k=3, top_n=2, show_progress=False,
    )  # fmt: skip
    slow = runs["slow"]
    assert max(o.latency_s for o in slow.outcomes.values()) < 0.2
    assert slow.load_s is not None and slow.load_s >= 0.4
    assert runs["none"].load_s is None
    (scored, _) = score_runs(dataset, runs)
    assert scored.row()["load_s"] == slow.load_s and scored.latency_p95_s < 0.2
    # A cascade's stages are loaded too (its first stage is the cross-encoder).
    from llamaindex_rerankers.cascade import CascadeReranker

    cascade = CascadeReranker(
        first=LoadsSlowly(table=table), second=TableReranker(table=table), keep=2
    )
    runs = run_rerankers(
        dataset, RunFileStage(dataset, run), {"cascade": cascade},
        top_k=3, top_n=2, show_progress=False,
    )  # fmt: skip
    assert max(o.latency_s for o in runs["cascade"].outcomes.values()) < 0.2
    assert (runs["cascade"].load_s or 0) >= 0.4


# -- the table: means, integer counts, the essentials -------------------------------------------


def test_counts_are_integers_and_the_retrieval_weight_is_a_mean(tiny: tuple[Dataset, Run]) -> None:
    dataset, _ = tiny
    run = RerankerRun("llm", top_k=3, top_n=None)
    for qid, calls, weight in (("q1", 2, 0.2), ("q2", 5, 0.6)):
        counters = {"calls": calls, "retrieval_weight": weight}
        run.outcomes[qid] = QueryOutcome(qid, ("d1",), 3, 0.1, counters, dropped=0)
    (scored,) = score_runs(dataset, {"llm": run})
    row = scored.row()
    assert row["mean_retrieval_weight"] == pytest.approx(0.4)
    assert "total_retrieval_weight" not in row
    assert (row["total_calls"], row["total_dropped"]) == (7, 0)
    assert all(type(row[k]) is int for k in ("total_calls", "total_dropped", "queries"))
    table = markdown_table([row], ["total_calls", "total_dropped", "mean_retrieval_weight"])
    assert table.splitlines()[-1] == "| 7 | 0 | 0.4000 |"
