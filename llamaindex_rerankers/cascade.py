"""Two-stage reranking: a cheap reranker prunes K candidates to M, a stronger one orders those M."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, field_serializer, field_validator

from llamaindex_rerankers.base import BaseReranker, check_weight, weight_for
from llamaindex_rerankers.scoring import penalised, rank_order, usable_score
from llamaindex_rerankers.types import Judgement, RerankReport

#: The first stage's weight with ``stage1_weight="auto"`` when the second stage reports no
#: uncertainty to choose it from.
AUTO_FALLBACK_WEIGHT = 0.5


class CascadeReranker(BaseReranker):
    """Prune with ``first`` (e.g. a cross-encoder) to the best ``keep``, then judge those with
    ``second`` (e.g. the LLM reranker).

    A survivor's score blends both stages, ``(1 - stage1_weight) · second + stage1_weight ·
    first``, so the first stage's judgement is not thrown away when the second stage is noisy
    (both of ours score in [0, 1]; ``stage1_weight=0`` orders by the second stage alone). Each
    node carries the second stage's own score as ``rerank_stage2_score``, the first stage's score
    and rank as ``rerank_stage1_score`` / ``rerank_stage1_rank``, and the first stage's own
    metadata under ``rerank_stage1_*``. The order is: the survivors by that score; then any
    survivor the second stage failed to judge; then the candidates the first stage cut, in its
    order, with ``rerank_score=None`` (counted as ``n_pruned``). Nothing is dropped, so with
    ``top_n`` larger than ``keep`` the tail is filled in first-stage order. The stages' own
    ``top_n``, ``min_score`` and ``retrieval_weight`` are not used: set them on the cascade.
    A stage's injection penalty (``detect_injection``) is kept: the first stage's orders the cut,
    and the larger of the two is taken off a survivor's final score.

    Example:
        >>> cascade = CascadeReranker(  # doctest: +SKIP
        ...     first=CrossEncoderReranker(), second=LLMReranker(), keep=8, top_n=5
        ... )
    """

    first: BaseReranker = Field(description="Cheap first stage that prunes K candidates to keep.")
    second: BaseReranker = Field(description="Stronger second stage that orders the survivors.")
    keep: int = Field(default=6, ge=1, description="How many candidates the second stage sees.")
    stage1_weight: float | Literal["auto"] = Field(
        default="auto",
        description="Weight w of the first stage's score in a survivor's score: (1 - w) * "
        "second + w * first. 0: the second stage alone orders the survivors. 'auto' (default): "
        "w chosen per query from the second stage's uncertainty (scoring.fusion_weight, the "
        f"formula of retrieval_weight='auto'); {AUTO_FALLBACK_WEIGHT} when the second stage "
        "reports none (a cross-encoder, text-only LLM answers).",
    )

    @field_validator("stage1_weight", mode="before")
    @classmethod
    def _check_stage1_weight(cls, value: Any) -> Any:
        return check_weight("stage1_weight", value)

    @classmethod
    def class_name(cls) -> str:
        return "CascadeReranker"

    @field_validator("first", "second", mode="before")
    @classmethod
    def _stage_from_config(cls, value: Any) -> Any:
        """A stage stored by ``to_dict`` (a dict with ``class_name``) is rebuilt as its class."""
        if isinstance(value, dict):
            return BaseReranker.from_dict(value)
        return value

    @field_serializer("first", "second")
    def _stage_to_config(self, stage: BaseReranker) -> dict[str, Any]:
        return stage.to_dict()

    @property
    def model_name(self) -> str:
        return f"{self.first.model_name} -> {self.second.model_name}"

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        r1, r2 = _run_stage(report, len(texts)), _run_stage(report, min(self.keep, len(texts)))
        stage1 = _usable(self.first._judge(query, texts, r1))
        survivors = self._survivors(stage1)
        stage2 = _usable(self.second._judge(query, [texts[i] for i in survivors], r2))
        report.add_usage(r1)
        report.add_usage(r2)
        return _combine(stage1, survivors, stage2, self.stage1_weight)

    async def _ajudge(
        self, query: str, texts: Sequence[str], report: RerankReport
    ) -> list[Judgement]:
        r1, r2 = _run_stage(report, len(texts)), _run_stage(report, min(self.keep, len(texts)))
        stage1 = _usable(await self.first._ajudge(query, texts, r1))
        survivors = self._survivors(stage1)
        stage2 = _usable(await self.second._ajudge(query, [texts[i] for i in survivors], r2))
        report.add_usage(r1)
        report.add_usage(r2)
        return _combine(stage1, survivors, stage2, self.stage1_weight)

    def _survivors(self, stage1: Sequence[Judgement]) -> list[int]:
        return _stage1_order(stage1)[: self.keep]


def _run_stage(report: RerankReport, n: int) -> RerankReport:
    return RerankReport(query=report.query, n_candidates=n)


def _usable(judgements: Sequence[Judgement]) -> list[Judgement]:
    """A stage's judgements with the scores the base would use: a NaN or infinite score is
    unjudged (so it never outranks a judged passage in the cut), the rest clamped to [0, 1]."""
    return [dataclasses.replace(j, score=usable_score(j.score)) for j in judgements]


def stage1_weight_for(stage1_weight: float | str, stage2: Sequence[Judgement]) -> float:
    """The first stage's weight for one query: the fixed one, or with ``"auto"``
    :func:`~llamaindex_rerankers.scoring.fusion_weight` of the second stage's uncertainties
    (:data:`AUTO_FALLBACK_WEIGHT` when it reports none).

    Example:
        >>> stage1_weight_for("auto", [Judgement(0.9, uncertainty=0.1)])
        0.0
        >>> stage1_weight_for("auto", [Judgement(0.9)])
        0.5
    """
    return weight_for(stage1_weight, stage2, fallback=AUTO_FALLBACK_WEIGHT)


def _combine(
    stage1: Sequence[Judgement],
    survivors: Sequence[int],
    stage2: Sequence[Judgement],
    stage1_weight: float | str,
) -> list[Judgement]:
    if len(stage2) != len(survivors):
        raise RuntimeError(
            f"second stage returned {len(stage2)} judgements for {len(survivors)} passages"
        )
    weight = stage1_weight_for(stage1_weight, stage2)
    order1 = _stage1_order(stage1)
    out = [Judgement(None, {}, pruned=True)] * len(stage1)
    for rank, i in enumerate(order1, start=1):
        out[i] = Judgement(None, _stage1_meta(stage1[i], rank), pruned=True, pruned_rank=rank)
    for i, j in zip(survivors, stage2, strict=True):
        s1, s2 = stage1[i].score, j.score
        score = s2
        if s1 is not None and s2 is not None:
            score = (1.0 - weight) * s2 + weight * s1
        meta = {**out[i].metadata, **j.metadata, "rerank_stage2_score": s2,
                "rerank_stage1_weight": weight}  # fmt: skip
        out[i] = Judgement(score, meta, penalty=max(stage1[i].penalty, j.penalty))
    return out


def _stage1_order(stage1: Sequence[Judgement]) -> list[int]:
    """The first stage's order, its penalties applied as the base applies them (a first stage
    that flags injections, ``CrossEncoderReranker(detect_injection=True)``, demotes a suspected
    passage in the cut too, so that it reaches the second stage only if there is room)."""
    scores = [penalised(j.score, j.penalty) for j in stage1]
    return rank_order(scores, [j.penalty for j in stage1])


def _stage1_meta(j: Judgement, rank: int | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        f"rerank_stage1_{k.removeprefix('rerank_')}": v for k, v in j.metadata.items()
    }
    meta["rerank_stage1_score"] = j.score
    meta["rerank_stage1_rank"] = rank
    return meta
