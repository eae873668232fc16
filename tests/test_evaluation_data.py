"""Loading BEIR datasets and TREC runs, and scoring runs with ir-measures."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from llamaindex_rerankers.evaluation import (
    Dataset,
    DatasetError,
    Doc,
    candidates,
    evaluate,
    load_beir,
    load_qrels,
    load_trec_run,
    per_query,
)

# -- tiny hand-written dataset ---------------------------------------------------------------


def _write_dataset(root: Path) -> Path:
    root.mkdir()
    docs = [
        {"_id": "d1", "title": "Apple trees", "text": "Prune in late winter."},
        {"_id": "d2", "title": "", "text": "Apple Inc. stock fell."},
        {"_id": "d3", "text": "Pear trees need less pruning."},
    ]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    queries = [
        {"_id": "q1", "text": "when to prune apple trees"},
        {"_id": "q2", "text": "apple stock"},
        {"_id": "q9", "text": "a training query"},
    ]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t0\nq2\td2\t1\n"
    )
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq9\td3\t1\n")
    return root


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "tiny")


def test_load_beir_tiny(tiny: Path) -> None:
    ds = load_beir(tiny)
    assert isinstance(ds, Dataset)
    assert ds.name == "tiny" and ds.split == "test"
    assert ds.corpus["d1"] == Doc("d1", "Apple trees", "Prune in late winter.")
    assert ds.corpus["d1"].content == "Apple trees\nPrune in late winter."
    assert ds.corpus["d2"].content == "Apple Inc. stock fell."  # empty title: text only
    assert ds.corpus["d3"].title == ""  # missing title
    # Only the split's judged queries, in file order; graded labels kept as ints.
    assert ds.queries == {"q1": "when to prune apple trees", "q2": "apple stock"}
    assert ds.qrels == {"q1": {"d1": 2, "d3": 0}, "q2": {"d2": 1}}
    assert ds.query_ids(1) == ["q1"]
    train = load_beir(tiny, split="train")
    assert train.queries == {"q9": "a training query"}


def test_missing_files_raise_clear_errors(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_beir(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"dev.*Splits found.*'test', 'train'"):
        load_beir(tiny, split="dev")
    (tiny / "queries.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"queries.*queries\.jsonl"):
        load_beir(tiny)
    with pytest.raises(DatasetError, match=r"run.*missing\.trec"):
        load_trec_run(tmp_path / "missing.trec")


def test_malformed_files_name_file_and_line(tiny: Path) -> None:
    (tiny / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(DatasetError, match="header"):
        load_qrels(tiny / "qrels" / "test.tsv")
    (tiny / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(DatasetError, match=r"test.tsv:2: relevance 'high'"):
        load_qrels(tiny / "qrels" / "test.tsv")
    (tiny / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\n{not json\n')
    with pytest.raises(DatasetError, match=r"corpus.jsonl:2: not valid JSON"):
        load_beir(tiny)
    run = tiny / "run.trec"
    run.write_text("q1 Q0 d1 1 2.0 bm25\nq1 Q0 d2 2\n")
    with pytest.raises(DatasetError, match=r"run.trec:2: expected 6 fields"):
        load_trec_run(run)


def test_judged_query_without_text_is_an_error(tiny: Path) -> None:
    (tiny / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq7\td1\t1\n")
    with pytest.raises(DatasetError, match="no text"):
        load_beir(tiny)


def test_trec_run_is_ranked_by_rank_column(tiny: Path) -> None:
    run_file = tiny / "run.trec"
    run_file.write_text(
        "q1 Q0 d3 3 0.5 bm25\nq1 Q0 d1 1 2.5 bm25\nq2 Q0 d2 1 7 bm25\nq1 Q0 d2 2 1.25 bm25\n"
    )
    run = load_trec_run(run_file)
    assert run == {"q1": [("d1", 2.5), ("d2", 1.25), ("d3", 0.5)], "q2": [("d2", 7.0)]}


def test_candidates_build_fresh_nodes_with_run_scores(tiny: Path) -> None:
    ds = load_beir(tiny)
    run = {"q1": [("d1", 2.5), ("d2", 1.25), ("d3", 0.5)]}
    nodes = candidates(ds, run, "q1", k=2)
    assert [(n.node.node_id, n.score) for n in nodes] == [("d1", 2.5), ("d2", 1.25)]
    assert nodes[0].node.get_content() == "Apple trees\nPrune in late winter."
    assert candidates(ds, run, "q1")[2].node.get_content() == "Pear trees need less pruning."
    assert candidates(ds, run, "q2", k=5) == []  # absent from the run: no candidates
    assert candidates(ds, run, "q1", k=1)[0] is not nodes[0]
    with pytest.raises(DatasetError, match=r"'zz'.*not in the corpus"):
        candidates(ds, {"q1": [("zz", 1.0)]}, "q1")


# -- real data ---------------------------------------------------------------------------


@pytest.mark.slow
def test_scifact_counts_and_bm25(data_dir: Path) -> None:
    ds = load_beir(data_dir / "scifact")
    assert len(ds.corpus) == 5183
    assert len(ds.queries) == 300
    assert sum(len(v) for v in ds.qrels.values()) == 339
    assert set(ds.queries) == set(ds.qrels)
    run = load_trec_run(data_dir / "scifact" / "runs" / "bm25_top100.trec")
    assert len(run) == 300
    assert max(len(v) for v in run.values()) == 100
    assert sum(len(v) == 100 for v in run.values()) > 250
    # Ranked best first (the file's rank column agrees with its scores).
    assert all(all(a[1] >= b[1] for a, b in itertools.pairwise(v)) for v in run.values())
    qid = ds.query_ids(1)[0]
    nodes = candidates(ds, run, qid, k=20)
    assert [n.node.node_id for n in nodes] == [d for d, _ in run[qid][:20]]
    doc = ds.corpus[nodes[0].node.node_id]
    assert nodes[0].node.get_content() == f"{doc.title}\n{doc.text}"
    # The shared README's verified BM25 figure (Anserini BM25 flat).
    assert evaluate(ds.qrels, run, ["nDCG@10"])["nDCG@10"] == pytest.approx(0.6789, abs=5e-5)


@pytest.mark.slow
def test_trec_dl_2019_graded_labels(data_dir: Path) -> None:
    ds = load_beir(data_dir / "trec-dl-2019")
    assert len(ds.queries) == 43
    assert len(ds.corpus) == 4297
    assert sum(len(v) for v in ds.qrels.values()) == 9260
    labels = {label for judged in ds.qrels.values() for label in judged.values()}
    assert labels == {0, 1, 2, 3}
    run = load_trec_run(data_dir / "trec-dl-2019" / "runs" / "bm25_top100.trec")
    graded = evaluate(ds.qrels, run, ["nDCG@10", "RR@10", "RR(rel=2)@10"])
    assert graded["nDCG@10"] == pytest.approx(0.5058, abs=5e-5)
    # A stricter relevance threshold can only push the first relevant hit down.
    assert graded["RR(rel=2)@10"] < graded["RR@10"]


@pytest.mark.slow
def test_nfcorpus_counts(data_dir: Path) -> None:
    ds = load_beir(data_dir / "nfcorpus")
    assert len(ds.corpus) == 3633
    assert len(ds.queries) == 323
    assert sum(len(v) for v in ds.qrels.values()) == 12334


# -- metrics on hand-made qrels and runs -----------------------------------------------------

QRELS = {"q1": {"a": 1, "b": 0, "c": 2}, "q2": {"d": 1}, "q3": {"e": 1}}
RUN = {"q1": [("b", 3.0), ("a", 2.0), ("c", 1.0)], "q2": [("x", 1.0), ("d", 0.5)]}  # no q3


def test_metrics_by_hand() -> None:
    log2 = math.log2
    # trec_eval nDCG: gain = label, discount log2(rank + 1).
    ndcg_q1 = (0 + 1 / log2(3) + 2 / log2(4)) / (2 + 1 / log2(3))
    ndcg_q2 = (1 / log2(3)) / 1
    scores = per_query(QRELS, RUN, ["nDCG@10", "RR@10", "RR(rel=2)@10", "R@2"])
    assert scores["q1"] == pytest.approx(
        {"nDCG@10": ndcg_q1, "RR@10": 1 / 2, "RR(rel=2)@10": 1 / 3, "R@2": 1 / 2}
    )
    assert scores["q2"] == pytest.approx(
        {"nDCG@10": ndcg_q2, "RR@10": 1 / 2, "RR(rel=2)@10": 0.0, "R@2": 1.0}
    )
    # q3 is judged but missing from the run: it scores 0 and counts in the mean.
    assert scores["q3"] == {"nDCG@10": 0.0, "RR@10": 0.0, "RR(rel=2)@10": 0.0, "R@2": 0.0}
    agg = evaluate(QRELS, RUN, ["nDCG@10", "RR@10", "RR(rel=2)@10", "R@2"])
    assert agg == pytest.approx(
        {
            "nDCG@10": (ndcg_q1 + ndcg_q2 + 0) / 3,
            "RR@10": (1 / 2 + 1 / 2 + 0) / 3,
            "RR(rel=2)@10": (1 / 3 + 0 + 0) / 3,
            "R@2": (1 / 2 + 1 + 0) / 3,
        }
    )


def test_metrics_query_subset_dict_runs_and_empty_results() -> None:
    dict_run = {q: dict(v) for q, v in RUN.items()}
    assert evaluate(QRELS, dict_run, ["RR@10"], query_ids=["q2"]) == {"RR@10": 0.5}
    # An empty result list is the same as a missing query.
    assert evaluate(QRELS, {"q3": []}, ["nDCG@10"], query_ids=["q3"]) == {"nDCG@10": 0.0}
    assert evaluate(QRELS, {}, ["nDCG@10", "RR@10"]) == {"nDCG@10": 0.0, "RR@10": 0.0}
    # Reranking the right document to the top improves exactly q1.
    better = dict(RUN, q1=[("c", 9.0), ("a", 2.0), ("b", 1.0)])
    assert per_query(QRELS, better, ["nDCG@10"])["q1"]["nDCG@10"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no judgements"):
        evaluate(QRELS, RUN, ["nDCG@10"], query_ids=["q1", "nope"])
