"""Cross-encoder reranker: a sentence-transformers ``CrossEncoder`` scores (query, passage) pairs.

Speed: identical passages are scored once, pairs are batched by token length, inference runs
under ``torch.inference_mode``, and ``precision="bfloat16"`` uses torch autocast.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr

from llamaindex_rerankers._imports import require
from llamaindex_rerankers._models import ModelLoadError, model_location
from llamaindex_rerankers.base import BaseReranker
from llamaindex_rerankers.scoring import sigmoid
from llamaindex_rerankers.types import CrossEncoderUsage, Judgement, RerankReport

logger = logging.getLogger(__name__)

DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L-6-v2"
#: Environment variable naming a model id or local path that replaces the default model.
CROSS_ENCODER_ENV = "LLAMAINDEX_RERANKERS_CROSS_ENCODER"


def default_cross_encoder() -> str:
    """The model used when none is passed: ``$LLAMAINDEX_RERANKERS_CROSS_ENCODER`` or the hub
    default."""
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
        >>> texts = ["Prune in late winter.", "AAPL fell 2%."]
        >>> nodes = [NodeWithScore(node=TextNode(text=t)) for t in texts]
        >>> reranker.postprocess_nodes(nodes, query_str="how to prune apples")  # doctest: +SKIP
    """

    model: str = Field(
        default_factory=default_cross_encoder,
        description="Hugging Face hub id or local path of a one-logit cross-encoder. Default: "
        f"${CROSS_ENCODER_ENV} if set, else {DEFAULT_CROSS_ENCODER}.",
    )
    batch_size: int = Field(default=32, ge=1, description="Pairs per forward pass.")
    max_length: int | None = Field(
        default=None,
        ge=8,
        description="Token limit per (query, passage) pair; None uses the "
        "model's own limit. Longer pairs are truncated and flagged rerank_truncated.",
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

    @classmethod
    def class_name(cls) -> str:
        return "CrossEncoderReranker"

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
        started = time.perf_counter()
        model = self.load()
        # Identical passages (duplicated chunks, repeated hits) are scored once.
        unique = list(dict.fromkeys(texts))
        lengths = _pair_lengths(model, query, unique)
        limit = model.max_seq_length
        cut = dict(zip(unique, (limit is not None and n > limit for n in lengths), strict=True))
        n_cut = sum(cut[t] for t in texts)
        if n_cut:
            logger.warning(
                "%d of %d (query, passage) pairs exceed max_length=%s tokens and were truncated "
                "(see node metadata 'rerank_truncated'); raise max_length or chunk documents "
                "smaller.",
                n_cut,
                len(texts),
                limit,
            )
        logits = _score_pairs(model, query, unique, lengths, self.batch_size, self.precision)
        report.cross_encoder = CrossEncoderUsage(
            pairs=len(unique),
            deduplicated=len(texts) - len(unique),
            truncated=n_cut,
            seconds=time.perf_counter() - started,
        )
        by_text = dict(zip(unique, logits, strict=True))
        return [
            Judgement(
                score=sigmoid(by_text[t]),
                metadata={"rerank_logit": by_text[t], "rerank_truncated": cut[t]},
            )
            for t in texts
        ]


def _score_pairs(
    model: Any,
    query: str,
    texts: Sequence[str],
    lengths: Sequence[int],
    batch_size: int,
    precision: str,
) -> list[float]:
    """The raw logit of each (query, text) pair, as Python floats in input order.

    Pairs are batched by token length (shortest first) so that a batch pads little, and run
    under ``torch.inference_mode`` with the requested precision. In float32 the logits equal
    ``CrossEncoder.predict(..., activation_fn=Identity())`` up to padding noise (~1e-6).
    """
    torch = require("torch")
    if not texts:
        return []
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    logits = [0.0] * len(texts)
    can_forward = callable(getattr(model, "preprocess", None))
    if getattr(model, "training", False):
        model.eval()  # as predict() does: no dropout at inference
    with torch.inference_mode(), _precision(torch, precision, model.device.type):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            pairs = [(query, texts[i]) for i in idx]
            if can_forward:
                features = model.preprocess(pairs)
                features = {
                    k: v.to(model.device) if hasattr(v, "to") else v for k, v in features.items()
                }
                scores = model(features)["scores"]
            else:  # older sentence-transformers: no preprocess/forward split
                scores = model.predict(
                    pairs,
                    batch_size=len(pairs),
                    activation_fn=torch.nn.Identity(),
                    show_progress_bar=False,
                    convert_to_tensor=True,
                )
            for i, value in zip(idx, scores.float().reshape(-1).tolist(), strict=True):
                logits[i] = float(value)
    return logits


def _precision(torch: Any, precision: str, device_type: str) -> Any:
    if precision == "bfloat16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device_type, enabled=False)


def _pair_lengths(model: Any, query: str, texts: Sequence[str]) -> list[int]:
    """Untruncated token length of each (query, text) pair, counted with the model's tokenizer."""
    tokenizer = model.tokenizer
    if tokenizer is None or not texts:
        return [0] * len(texts)
    ids = tokenizer([query] * len(texts), list(texts), truncation=False, verbose=False)["input_ids"]
    return [len(x) for x in ids]


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
    location = model_location(name, "Cross-encoder", how_to_fix, ModelLoadError)
    st = require("sentence_transformers")
    try:
        model = st.CrossEncoder(
            location,
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
