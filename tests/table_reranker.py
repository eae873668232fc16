"""A deterministic reranker for testing the shared machinery (the base, the cascade).

It only supplies scores from a table; what is under test is everything around it.
"""

from __future__ import annotations

from collections.abc import Sequence

from llamaindex_rerankers.base import BaseReranker
from llamaindex_rerankers.types import Judgement, LLMUsage, RerankReport


class TableReranker(BaseReranker):
    """Scores each text from a fixed table; a missing text is 'could not judge'."""

    table: dict[str, float] = {}
    calls: int = 0
    seen: list[str] = []

    @classmethod
    def class_name(cls) -> str:
        return "TableReranker"

    @property
    def model_name(self) -> str:
        return "table"

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        self.calls += 1
        self.seen = list(texts)
        report.llm = LLMUsage(judgements=len(texts), calls=len(texts))
        keys = [t.rsplit("\n", 1)[-1] for t in texts]  # the node text after its metadata header
        return [Judgement(self.table.get(k), {"rerank_seen": k}) for k in keys]
