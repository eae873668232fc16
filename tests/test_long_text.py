"""Long passages: ``long_text="windows"`` (overlapping windows, MaxP) on the real offline
cross-encoder and on the LLM reranker through a scripted chat client."""

from __future__ import annotations

import logging

import pytest
from llama_index.core.schema import NodeWithScore, TextNode
from scripted_judge import DistributionClient

from llamaindex_rerankers import CrossEncoderReranker
from llamaindex_rerankers import cross_encoder as ce_module
from llamaindex_rerankers.llm import LLMReranker
from llamaindex_rerankers.llm.calibration import CONTENT_FREE_PASSAGES

QUERY = "when should apple trees be pruned"
FILLER = " ".join(
    ["The committee met on Tuesday to discuss the annual budget and the parking rules for staff."]
    * 8
)
ANSWER = "Apple trees are best pruned in late winter, while the tree is dormant."
#: ~150 tokens: the answer sits past the cut of a 128-token pair.
LONG = f"{FILLER} {ANSWER}"
OTHER = "Apple trees grow in many climates and produce fruit in autumn."


def nodes_of(*texts: str) -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=1.0) for i, t in enumerate(texts)
    ]


@pytest.mark.slow
def test_windows_find_the_answer_past_the_cut_that_truncation_misses(ce_model_path: str) -> None:
    nodes = nodes_of(OTHER, LONG, LONG)
    cut = CrossEncoderReranker(model=ce_model_path, device="cpu", max_length=128)
    windowed = CrossEncoderReranker(
        model=ce_model_path, device="cpu", max_length=128, long_text="windows"
    )
    truncated = cut.rerank(nodes, QUERY)
    assert [n.node.node_id for n in truncated.nodes] == ["n0", "n1", "n2"]
    assert truncated.nodes[1].node.metadata["rerank_truncated"] is True
    assert "rerank_windows" not in truncated.nodes[1].node.metadata

    result = windowed.rerank(nodes, QUERY)
    assert [n.node.node_id for n in result.nodes] == ["n1", "n2", "n0"]
    meta = {n.node.node_id: n.node.metadata for n in result.nodes}
    assert meta["n1"]["rerank_windows"] == 2 and meta["n0"]["rerank_windows"] == 1
    best = meta["n1"]["rerank_best_window_offset"]
    assert 0 < best <= LONG.index(ANSWER)  # the window that holds the answer
    assert meta["n1"]["rerank_truncated"] is False  # every window fits max_length
    assert meta["n0"]["rerank_best_window_offset"] == 0
    assert result.nodes[0].score == result.nodes[1].score  # duplicates score alike
    assert result.nodes[0].score > truncated.nodes[1].score

    usage = result.report.cross_encoder
    assert usage is not None
    # OTHER (1 pair) + LONG's 2 windows; the repeated LONG is scored once.
    assert (usage.pairs, usage.windowed, usage.windows, usage.deduplicated) == (3, 1, 2, 1)
    assert usage.truncated == 0
    assert result.report.to_dict()["cross_encoder"]["windows"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [32, 48, 128])
def test_windows_that_fit_are_not_reported_truncated(
    ce_model_path: str, max_length: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Windows are sized to fill max_length exactly with the query and every special token (a
    BERT pair ends with a second [SEP]): none is cut, flagged, counted or warned about."""
    passage = "Apple trees are pruned in late winter while dormant. " * 12
    r = CrossEncoderReranker(
        model=ce_model_path, device="cpu", max_length=max_length, long_text="windows"
    )
    with caplog.at_level(logging.WARNING, logger="llamaindex_rerankers.cross_encoder"):
        result = r.rerank(nodes_of(passage, OTHER), QUERY)
    meta = result.nodes[0].node.metadata
    assert meta["rerank_windows"] > 1
    assert meta["rerank_truncated"] is False
    assert result.report.cross_encoder is not None
    assert result.report.cross_encoder.truncated == 0
    assert not [rec for rec in caplog.records if "truncated" in rec.getMessage()]
    # Each window really fits: the tokenizer cuts none of the pairs.
    loaded = r._load()
    windows = ce_module._windows_of(loaded, QUERY, [passage], r.window_overlap, "windows")[0]
    assert len(windows) > 1
    assert loaded.encoder.encode(QUERY, [w.text for w in windows]).truncated == [False] * len(
        windows
    )


@pytest.mark.slow
def test_a_query_that_fills_max_length_is_truncated_with_its_own_advice(
    ce_model_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    long_query = " ".join(["apple tree pruning in winter"] * 10)
    r = CrossEncoderReranker(model=ce_model_path, device="cpu", max_length=16, long_text="windows")
    with caplog.at_level(logging.WARNING, logger="llamaindex_rerankers.cross_encoder"):
        result = r.rerank(nodes_of(LONG), long_query)
    assert result.nodes[0].node.metadata["rerank_truncated"] is True
    assert result.report.cross_encoder is not None and result.report.cross_encoder.truncated == 1
    (warning,) = [rec.getMessage() for rec in caplog.records if "truncated" in rec.getMessage()]
    assert "pass long_text='windows'" not in warning
    assert "query" in warning


@pytest.mark.slow
def test_windows_equal_truncation_when_every_passage_fits(ce_model_path: str) -> None:
    nodes = nodes_of(OTHER, ANSWER)
    cut = CrossEncoderReranker(model=ce_model_path, device="cpu").rerank(nodes, QUERY)
    windows = CrossEncoderReranker(model=ce_model_path, device="cpu", long_text="windows")
    out = windows.rerank(nodes, QUERY)
    assert [n.score for n in out.nodes] == [n.score for n in cut.nodes]
    assert out.report.cross_encoder is not None and out.report.cross_encoder.windows == 0


@pytest.mark.slow
def test_identical_windows_of_different_passages_are_scored_once(ce_model_path: str) -> None:
    # Two passages that differ only after the first window share that window.
    other_tail = f"{FILLER} Pears ripen in September."
    r = CrossEncoderReranker(
        model=ce_model_path, device="cpu", max_length=128, long_text="windows", window_overlap=0
    )
    out = r.rerank(nodes_of(LONG, other_tail), QUERY)
    usage = out.report.cross_encoder
    assert usage is not None and usage.windowed == 2
    assert usage.windows == 3 and usage.pairs == 3  # 2 + 2 windows, the first one shared


def test_long_text_settings_validate_and_round_trip() -> None:
    r = CrossEncoderReranker(model="m", long_text="windows", window_overlap=32)
    again = CrossEncoderReranker.from_dict(r.to_dict())
    assert (again.long_text, again.window_overlap) == ("windows", 32)
    with pytest.raises(ValueError):
        CrossEncoderReranker(model="m", long_text="chunks")  # type: ignore[arg-type]
    for cls in (CrossEncoderReranker, LLMReranker):
        with pytest.raises(ValueError, match="fraction"):
            cls(model="m", window_overlap=2.5)
    llm = LLMReranker(model="m", cache=None, long_text="windows", window_overlap=0.5)
    assert LLMReranker.from_dict(llm.to_dict()).long_text == "windows"


_A, _B, _C = (0.9, 0.1, 0.0), (0.1, 0.9, 0.0), (0.1, 0.0, 0.9)


def _by_content(passage: str) -> tuple[float, float, float]:
    """C (very likely) for a passage that mentions 'winter', B for 'Apple', A otherwise."""
    return _C if "winter" in passage else _B if "Apple" in passage else _A


def test_llm_reranker_judges_every_window_and_keeps_the_best() -> None:
    client = DistributionClient(_by_content, prior=_A)
    # chars/4 counting: LONG (~800 characters) is several 60-token windows; OTHER is one.
    kwargs = {"model": "scripted", "client": client, "cache": None, "passage_max_tokens": 60}
    cut = LLMReranker(**kwargs).rerank(nodes_of(OTHER, LONG), QUERY)
    assert [n.node.node_id for n in cut.nodes] == ["n0", "n1"]  # the cut passage says nothing
    assert cut.nodes[1].node.metadata["rerank_truncated"] is True

    client.requests.clear()
    windowed = LLMReranker(**kwargs, long_text="windows")
    result = windowed.rerank(nodes_of(OTHER, LONG, LONG), QUERY)
    assert [n.node.node_id for n in result.nodes] == ["n1", "n2", "n0"]
    meta = result.nodes[0].node.metadata
    assert meta["rerank_label"] == "very likely" and meta["rerank_truncated"] is False
    n_windows = meta["rerank_windows"]
    offset = meta["rerank_best_window_offset"]
    assert LONG.index(ANSWER) >= offset and "winter" in LONG[offset:]
    assert result.nodes[2].node.metadata["rerank_windows"] == 1
    # Each distinct window is asked once: the repeated passage adds no request, and the
    # filler's repeated sentences make some windows of LONG identical (3 distinct of 5).
    # (Calibration's content-free passages are asked too, once each.)
    passages = [p for p in client.requests if p not in CONTENT_FREE_PASSAGES]
    assert len(client.requests) - len(passages) == len(CONTENT_FREE_PASSAGES)
    assert len(passages) == len(set(passages)) == 4
    assert all(len(p) <= 60 * 4 for p in client.requests)
    usage = result.report.llm
    assert usage is not None
    assert (n_windows, usage.windowed, usage.windows, usage.judgements) == (5, 1, 3, 4)
    assert usage.deduplicated == 1 and usage.truncated == 0
    assert result.report.n_judged == 3
