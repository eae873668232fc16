"""Cross-encoder reranker: a sentence-transformers ``CrossEncoder`` scores (query, passage) pairs."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr

from llamaindex_rerankers._imports import require
from llamaindex_rerankers.base import BaseReranker, Judgement, RerankReport
from llamaindex_rerankers.scoring import sigmoid

logger = logging.getLogger(__name__)

DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L-6-v2"
#: Environment variable naming a model id or local path that replaces the default model.
CROSS_ENCODER_ENV = "LLAMAINDEX_RERANKERS_CROSS_ENCODER"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the option that selects another one."""


def default_cross_encoder() -> str:
    """The model used when none is passed: ``$LLAMAINDEX_RERANKERS_CROSS_ENCODER`` or the hub default."""
    return os.environ.get(CROSS_ENCODER_ENV) or DEFAULT_CROSS_ENCODER


class CrossEncoderReranker(BaseReranker):
    """Rerank nodes with a sentence-transformers cross-encoder.

    The score of a passage is ``sigmoid(logit)`` of the model's single output logit, so it lies in
    (0, 1) whatever activation the model was saved with; the raw logit is kept in the node
    metadata as ``rerank_logit``. Pairs longer than ``max_length`` tokens are truncated by the
    model; each such node gets ``rerank_truncated=True`` and one warning is logged per call.

    Models are loaded once per process and shared by every instance with the same model, device,
    max_length and trust_remote_code, thread-safely.

    Example:
        >>> from llama_index.core.schema import NodeWithScore, TextNode
        >>> reranker = CrossEncoderReranker(top_n=2)  # doctest: +SKIP
        >>> nodes = [NodeWithScore(node=TextNode(text=t)) for t in ["Prune in late winter.", "AAPL fell 2%."]]
        >>> reranker.postprocess_nodes(nodes, query_str="how to prune apple trees")  # doctest: +SKIP
    """

    model: str = Field(
        default_factory=default_cross_encoder,
        description="Hugging Face hub id or local path of a one-logit cross-encoder. Default: "
        f"${CROSS_ENCODER_ENV} if set, else {DEFAULT_CROSS_ENCODER}.",
    )
    batch_size: int = Field(default=32, ge=1, description="Pairs per forward pass.")
    max_length: int | None = Field(
        default=None, ge=8, description="Token limit per (query, passage) pair; None uses the "
        "model's own limit. Longer pairs are truncated and flagged rerank_truncated."
    )
    device: str | None = Field(
        default=None, description="torch device ('cpu', 'cuda', 'mps'); None picks automatically."
    )
    precision: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="Arithmetic for inference. 'bfloat16' runs under torch autocast: much faster "
        "on CPUs with AMX/AVX512-BF16 and on GPUs, with scores that differ in the 2nd-3rd digit.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow model repositories to run their own code."
    )

    _model: Any = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        return self.model

    def load(self) -> Any:
        """Load (or fetch from the process-wide cache) the ``CrossEncoder``; returns it."""
        if self._model is None:
            self._model = _load_cross_encoder(
                self.model, self.device, self.max_length, self.trust_remote_code
            )
        return self._model

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        model = self.load()
        torch = require("torch")
        pairs = [(query, t) for t in texts]
        truncated = _truncated_pairs(model, query, texts)
        if any(truncated):
            logger.warning(
                "%d of %d (query, passage) pairs exceed max_length=%s tokens and were truncated "
                "(see node metadata 'rerank_truncated'); raise max_length or chunk documents "
                "smaller.", sum(truncated), len(texts), model.max_seq_length,
            )
        report.counters["truncated"] = sum(truncated)
        with _precision(torch, self.precision, model.device.type):
            logits = model.predict(
                pairs,
                batch_size=self.batch_size,
                activation_fn=torch.nn.Identity(),
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        return [
            Judgement(
                score=sigmoid(float(logit)),
                metadata={"rerank_logit": float(logit), "rerank_truncated": bool(cut)},
            )
            for logit, cut in zip(logits.reshape(-1), truncated, strict=True)
        ]


def _precision(torch: Any, precision: str, device_type: str) -> Any:
    if precision == "bfloat16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device_type, enabled=False)


def _truncated_pairs(model: Any, query: str, texts: Sequence[str]) -> list[bool]:
    """Which pairs the model will truncate, counted with its own tokenizer."""
    limit = model.max_seq_length
    tokenizer = model.tokenizer
    if limit is None or tokenizer is None:
        return [False] * len(texts)
    ids = tokenizer([query] * len(texts), list(texts), truncation=False, verbose=False)["input_ids"]
    return [len(x) > limit for x in ids]


_MODELS: dict[tuple[str, str | None, int | None, bool], Any] = {}
_MODELS_LOCK = threading.Lock()


def _load_cross_encoder(
    name: str, device: str | None, max_length: int | None, trust_remote_code: bool
) -> Any:
    key = (name, device, max_length, trust_remote_code)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        _MODELS[key] = model = _load_uncached(name, device, max_length, trust_remote_code)
        return model


def _load_uncached(
    name: str, device: str | None, max_length: int | None, trust_remote_code: bool
) -> Any:
    how_to_fix = (
        f"Pass model='<hub id or local path>' to CrossEncoderReranker, or set "
        f"{CROSS_ENCODER_ENV}=<local path> to replace the default ({DEFAULT_CROSS_ENCODER})."
    )
    path = Path(name).expanduser()
    # Hub ids are "org/name"; anything else path-like must exist on disk.
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not path.exists():
        raise ModelLoadError(f"Cross-encoder path {name!r} does not exist. {how_to_fix}")
    st = require("sentence_transformers")
    try:
        model = st.CrossEncoder(
            str(path) if looks_local else name,
            device=device,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
        )
    except Exception as exc:  # hub/network/format errors come in many types
        raise ModelLoadError(
            f"Could not load cross-encoder {name!r} ({type(exc).__name__}: {exc}). {how_to_fix}"
        ) from exc
    if model.num_labels != 1:
        raise ModelLoadError(
            f"Cross-encoder {name!r} has {model.num_labels} output labels; CrossEncoderReranker "
            f"needs a one-logit relevance model (num_labels=1). {how_to_fix}"
        )
    return model
