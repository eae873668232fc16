"""A scripted chat client whose label probabilities are set per passage, for tests of the
scoring around the judge (calibration, fusion, injection demotion): the reranker, its cache and
the base stay real."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence

from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers.llm.calibration import CONTENT_FREE_PASSAGES
from llamaindex_rerankers.llm.types import ChatClientError, ChatResult, GeneratedToken, TokenChoice

CODES = {"unlikely": "A", "likely": "B", "very likely": "C"}
Dist = tuple[float, float, float]  # p(A), p(B), p(C)


class DistributionClient:
    """Answers each passage with the label distribution ``table[passage]`` (or ``table(passage)``
    when it is a function: for passages not known in advance, such as windows), as logprobs of
    the three codes; a passage missing from the table (or None) fails with HTTP 500.
    Content-free passages get ``prior`` (None: they fail too). Every passage asked about is
    recorded in ``requests``."""

    def __init__(
        self,
        table: Mapping[str, Dist] | Callable[[str], Dist | None],
        prior: Dist | None,
        logprobs: bool = True,
    ) -> None:
        self._lookup = table if callable(table) else dict(table).get
        self.prior = prior
        self.logprobs = logprobs
        self.requests: list[str] = []

    @property
    def identity(self) -> tuple[str, str]:
        return ("http://scripted/v1", "scripted")

    async def achat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        logprobs: bool,
        top_logprobs: int,
        deadline: float | None = None,
    ) -> ChatResult:
        passage = messages[-1]["content"].split("<passage>\n")[1].split("\n</passage>")[0]
        # the prompt shows tags a passage forges as [passage] / [/passage]
        passage = passage.replace("[/passage]", "</passage>").replace("[passage]", "<passage>")
        self.requests.append(passage)
        await asyncio.sleep(0.001)
        dist = self.prior if passage in CONTENT_FREE_PASSAGES else self._lookup(passage)
        if dist is None:
            raise ChatClientError("HTTP 500", status=500, attempts=1)
        best = max(range(3), key=lambda i: dist[i])
        code = "ABC"[best]
        top = tuple(TokenChoice(c, math.log(p)) for c, p in zip("ABC", dist, strict=True) if p > 0)
        tokens = (GeneratedToken(code, math.log(dist[best]), top),) if self.logprobs else None
        return ChatResult(text=code, tokens=tokens, prompt_tokens=10, completion_tokens=1,
                          attempts=1)  # fmt: skip


def nodes_of(*texts: str) -> list[NodeWithScore]:
    """One node per text, its id the text itself, all with the same first-stage score."""
    return [NodeWithScore(node=TextNode(text=t, id_=t), score=1.0) for t in texts]
