"""Cross-encoder reranker: a sentence-transformers ``CrossEncoder`` scores (query, passage) pairs.

Inference is ``CrossEncoder.predict`` itself (length-sorted batches, inference mode), asked for raw
logits; identical passages are scored once, and ``precision="bfloat16"`` runs it under torch
autocast. One loaded model serves every instance, thread and task of the process (see
:class:`CrossEncoderReranker` for what that takes).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import importlib.util
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator, model_validator

from llamaindex_rerankers._imports import require
from llamaindex_rerankers._models import ModelLoadError, model_location
from llamaindex_rerankers.base import BaseReranker
from llamaindex_rerankers.scoring import sigmoid
from llamaindex_rerankers.types import CrossEncoderUsage, Judgement, RerankReport
from llamaindex_rerankers.windows import (
    DEFAULT_WINDOW_OVERLAP,
    LongText,
    Window,
    check_overlap,
    max_passage,
    split_windows,
)

logger = logging.getLogger(__name__)

DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L-6-v2"
#: Environment variable naming a model id or local path that replaces the default model.
CROSS_ENCODER_ENV = "LLAMAINDEX_RERANKERS_CROSS_ENCODER"
#: Environment variable: how many forward passes async calls run at once, process-wide.
CE_WORKERS_ENV = "LLAMAINDEX_RERANKERS_CE_WORKERS"
#: Default of ``$LLAMAINDEX_RERANKERS_CE_WORKERS``: one pass can tokenize while another computes;
#: more only split the same cores (torch already uses all of them inside one pass).
DEFAULT_CE_WORKERS = 2


def default_cross_encoder() -> str:
    """The model used when none is passed: ``$LLAMAINDEX_RERANKERS_CROSS_ENCODER`` or the hub
    default."""
    return os.environ.get(CROSS_ENCODER_ENV) or DEFAULT_CROSS_ENCODER


def inference_workers() -> int:
    """Worker threads of the process-wide pool that runs async cross-encoder calls:
    ``$LLAMAINDEX_RERANKERS_CE_WORKERS``, default :data:`DEFAULT_CE_WORKERS`.

    Raises:
        ValueError: the variable is set to something other than a positive integer.

    Example:
        >>> inference_workers() >= 1
        True
    """
    raw = os.environ.get(CE_WORKERS_ENV, "").strip()
    if not raw:
        return DEFAULT_CE_WORKERS
    try:
        workers = int(raw)
    except ValueError:
        workers = 0
    if workers < 1:
        raise ValueError(
            f"{CE_WORKERS_ENV}={raw!r} must be a positive integer: the number of cross-encoder "
            f"forward passes that async calls run at once (default {DEFAULT_CE_WORKERS})."
        )
    return workers


class CrossEncoderReranker(BaseReranker):
    """Rerank nodes with a sentence-transformers cross-encoder.

    The score of a passage is ``sigmoid(logit)`` of the model's single output logit, so it lies in
    (0, 1) whatever activation the model was saved with; the raw logit is kept in the node
    metadata as ``rerank_logit``. Pairs longer than ``max_length`` tokens are truncated by the
    model; each such node gets ``rerank_truncated=True`` and one warning is logged per call.

    Long passages (``long_text="windows"``): a passage whose pair would be cut is split into
    overlapping windows that each fit ``max_length`` with the query and the special tokens
    (counted with the model's tokenizer); every window is scored and the passage gets its best
    window's score (MaxP). Such nodes carry ``rerank_windows`` (windows scored for it, 1 for a
    passage that fits) and ``rerank_best_window_offset`` (character offset of the best window in
    the passage text); ``report.cross_encoder.windows`` counts the window pairs.

    Models are loaded once per process and shared by every instance with the same model, device,
    max_length, trust_remote_code, revision, backend, model_kwargs and tokenizer_kwargs.

    Concurrency: one instance (and one loaded model) serves many threads and asyncio tasks at
    once; each call gets exactly the result it would get alone. Inference is
    ``CrossEncoder.predict``, whose tokenizer only ever runs with predict's own settings; the
    untruncated lengths behind ``rerank_truncated`` are counted with a private copy of the
    tokenizer, under its own lock. Sync calls run in the calling thread. Async calls
    (``arerank``, ``apostprocess_nodes``) run in a process-wide pool of
    ``$LLAMAINDEX_RERANKERS_CE_WORKERS`` threads (default 2, read when the first async call
    starts the pool), so that 64 concurrent tasks queue for the model instead of starting 64
    forward passes at once; the event loop is never blocked.

    Example:
        >>> from llama_index.core.schema import NodeWithScore, TextNode
        >>> reranker = CrossEncoderReranker(top_n=2)  # doctest: +SKIP
        >>> texts = ["Prune in late winter.", "AAPL fell 2%."]
        >>> nodes = [NodeWithScore(node=TextNode(text=t)) for t in texts]
        >>> reranker.rerank(nodes, "how to prune apples").nodes[0].score  # doctest: +SKIP
        0.93
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
        "model's own limit. Longer pairs are truncated and flagged rerank_truncated, or split "
        "into windows with long_text='windows'.",
    )
    long_text: LongText = Field(
        default="truncate",
        description="What to do with a passage longer than max_length allows: 'truncate' scores "
        "its beginning (flagged rerank_truncated); 'windows' scores overlapping windows that "
        "each fit and keeps the best (MaxP), at one pair per window.",
    )
    window_overlap: float = Field(
        default=DEFAULT_WINDOW_OVERLAP,
        ge=0,
        description="Tokens shared by consecutive windows (long_text='windows'): a fraction in "
        "[0, 1) of the window's token budget, or a whole number of tokens (>= 1).",
    )
    device: str | None = Field(
        default=None, description="torch device ('cpu', 'cuda', 'mps'); None picks automatically."
    )
    precision: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="Arithmetic for inference. 'bfloat16' runs under torch autocast: much faster "
        "on CPUs with AMX/AVX512-BF16 and on GPUs, with scores that differ in the 2nd-3rd digit. "
        "Torch backend only.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow model repositories to run their own code."
    )
    revision: str | None = Field(
        default=None,
        description="Branch, tag or commit of a hub model to load; None takes the default branch.",
    )
    backend: Literal["torch", "onnx", "openvino"] = Field(
        default="torch",
        description="Inference backend, passed to CrossEncoder(backend=...). 'onnx' needs "
        "pip install 'sentence-transformers[onnx]', 'openvino' needs "
        "pip install 'sentence-transformers[openvino]'.",
    )
    model_kwargs: dict[str, Any] | None = Field(
        default=None,
        description="Passed to the model's from_pretrained through CrossEncoder(model_kwargs=...), "
        "e.g. {'attn_implementation': 'eager'} or {'dtype': 'bfloat16'}; JSON-safe values, so "
        "that the configuration round-trips (dtypes as strings).",
    )
    tokenizer_kwargs: dict[str, Any] | None = Field(
        default=None,
        description="Passed to the tokenizer's from_pretrained (sentence-transformers' "
        "processor_kwargs / tokenizer_kwargs); JSON-safe values.",
    )

    _loaded: _LoadedModel | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "CrossEncoderReranker"

    @field_validator("window_overlap")
    @classmethod
    def _check_window_overlap(cls, value: float) -> float:
        return check_overlap(value)

    @model_validator(mode="after")
    def _bfloat16_needs_torch(self) -> CrossEncoderReranker:
        if self.precision == "bfloat16" and self.backend != "torch":
            raise ValueError(
                f"precision='bfloat16' is torch autocast and does nothing on backend="
                f"{self.backend!r}; use precision='float32', or pick a quantized or half-precision "
                "export through model_kwargs={'file_name': ...}."
            )
        return self

    @property
    def model_name(self) -> str:
        return self.model

    def load(self) -> Any:
        """Load (or fetch from the process-wide cache) the ``CrossEncoder``; returns it.

        Raises:
            ModelLoadError: the model cannot be loaded, is not a one-logit model, or its backend's
                packages are not installed (the message says what to install).
        """
        return self._load().model

    def _load(self) -> _LoadedModel:
        if self._loaded is None:
            self._loaded = _load_cross_encoder(
                _ModelSettings(
                    name=self.model,
                    device=self.device,
                    max_length=self.max_length,
                    trust_remote_code=self.trust_remote_code,
                    revision=self.revision,
                    backend=self.backend,
                    model_kwargs=self.model_kwargs,
                    tokenizer_kwargs=self.tokenizer_kwargs,
                )
            )
        return self._loaded

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        started = time.perf_counter()
        loaded = self._load()
        # Identical passages (duplicated chunks, repeated hits) are scored once.
        unique = list(dict.fromkeys(texts))
        spans = _windows_of(loaded, query, unique, self.window_overlap, self.long_text)
        # Identical windows (of one passage or of two) are scored once too.
        pair_texts = list(dict.fromkeys(w.text for windows in spans for w in windows))
        lengths = loaded.pair_lengths(query, pair_texts)
        limit = loaded.model.max_seq_length
        over = {
            t: limit is not None and n > limit for t, n in zip(pair_texts, lengths, strict=True)
        }
        cut = {t: any(over[w.text] for w in ws) for t, ws in zip(unique, spans, strict=True)}
        n_cut = sum(cut[t] for t in texts)
        if n_cut:
            logger.warning(
                "%d of %d (query, passage) pairs exceed max_length=%s tokens and were truncated "
                "(see node metadata 'rerank_truncated'); raise max_length, chunk documents "
                "smaller, or pass long_text='windows'.",
                n_cut,
                len(texts),
                limit,
            )
        logits = _predict_logits(
            loaded.model, query, pair_texts, self.batch_size, self.precision, self.backend
        )
        by_pair = dict(zip(pair_texts, logits, strict=True))
        split = [ws for ws in spans if len(ws) > 1]
        report.cross_encoder = CrossEncoderUsage(
            pairs=len(pair_texts),
            deduplicated=len(texts) - len(unique),
            truncated=n_cut,
            windowed=len(split),
            windows=len({w.text for ws in split for w in ws}),
            seconds=time.perf_counter() - started,
        )
        by_text = {
            t: _best_window(ws, by_pair, self.long_text == "windows")
            for t, ws in zip(unique, spans, strict=True)
        }
        return [
            Judgement(
                score=sigmoid(by_text[t][0]),
                metadata={
                    "rerank_logit": by_text[t][0],
                    "rerank_truncated": cut[t],
                    **by_text[t][1],
                },
            )
            for t in texts
        ]

    async def _ajudge(
        self, query: str, texts: Sequence[str], report: RerankReport
    ) -> list[Judgement]:
        """:meth:`_judge` in the process-wide inference pool (bounded), off the event loop; the
        context is copied, as ``asyncio.to_thread`` does."""
        call = functools.partial(contextvars.copy_context().run, self._judge, query, texts, report)
        return await asyncio.get_running_loop().run_in_executor(_pool(), call)


def _windows_of(
    loaded: _LoadedModel, query: str, texts: Sequence[str], overlap: float, long_text: str
) -> list[list[Window]]:
    """Each passage's windows: the whole passage when truncating, or when it fits."""
    limit = loaded.model.max_seq_length
    if long_text != "windows" or limit is None or loaded.length_tokenizer is None:
        return [[Window(0, t)] for t in texts]
    # What the query and the special tokens leave of max_length for the passage.
    budget = int(limit) - loaded.pair_lengths(query, [""])[0]
    if budget < 1:  # the query alone fills max_length: nothing to window
        return [[Window(0, t)] for t in texts]
    return [split_windows(t, budget, loaded.count_tokens, overlap) for t in texts]


def _best_window(
    windows: Sequence[Window], logits: dict[str, float], windowed: bool
) -> tuple[float, dict[str, Any]]:
    """MaxP: the best window's logit and, when windowing, its metadata."""
    found = max_passage([logits[w.text] for w in windows])
    assert found is not None  # every window has a logit
    best, logit = found
    if not windowed:
        return logit, {}
    return logit, {
        "rerank_windows": len(windows),
        "rerank_best_window_offset": windows[best].offset,
    }


def _predict_logits(
    model: Any, query: str, texts: Sequence[str], batch_size: int, precision: str, backend: str
) -> list[float]:
    """The raw logit of each (query, text) pair, as Python floats in input order:
    ``CrossEncoder.predict`` with an identity activation, under the requested precision."""
    if not texts:
        return []
    torch = require("torch")
    if backend != "torch":
        precision_context: Any = contextlib.nullcontext()
    elif precision == "bfloat16":
        precision_context = torch.autocast(device_type=model.device.type, dtype=torch.bfloat16)
    else:  # also keeps a caller's own autocast out of float32 scores
        precision_context = torch.autocast(device_type=model.device.type, enabled=False)
    with precision_context:
        scores = model.predict(
            [(query, t) for t in texts],
            batch_size=batch_size,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=False,
            convert_to_numpy=True,
        )
    return [float(x) for x in scores.reshape(-1).tolist()]


@dataclass
class _ModelSettings:
    """Everything that makes a different loaded model (the process-wide cache key)."""

    name: str
    device: str | None
    max_length: int | None
    trust_remote_code: bool
    revision: str | None
    backend: str
    model_kwargs: dict[str, Any] | None
    tokenizer_kwargs: dict[str, Any] | None

    def key(self) -> tuple[Any, ...]:
        """The settings as a hashable tuple (the option dicts as canonical JSON)."""

        def frozen(d: dict[str, Any] | None) -> str:
            return json.dumps(d or {}, sort_keys=True, default=repr)

        return (
            self.name,
            self.device,
            self.max_length,
            self.trust_remote_code,
            self.revision,
            self.backend,
            frozen(self.model_kwargs),
            frozen(self.tokenizer_kwargs),
        )


@dataclass
class _LoadedModel:
    """A loaded ``CrossEncoder`` with what its concurrent callers need, cached together.

    The model's own tokenizer is called only by ``predict``, always with the same truncation
    and padding, which were set once at load time (a fast tokenizer keeps them as shared state,
    and changing them while another thread encodes lets untruncated or unpadded pairs through).
    Untruncated lengths are counted with ``length_tokenizer``, a private copy, under
    ``length_lock``.
    """

    model: Any
    length_tokenizer: Any
    length_lock: threading.Lock = field(default_factory=threading.Lock)

    def pair_lengths(self, query: str, texts: Sequence[str]) -> list[int]:
        """Untruncated token length of each (query, text) pair."""
        if self.length_tokenizer is None or not texts:
            return [0] * len(texts)
        with self.length_lock:
            ids = self.length_tokenizer(
                [query] * len(texts), list(texts), truncation=False, padding=False, verbose=False
            )["input_ids"]
        return [len(x) for x in ids]

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` alone, without special tokens (a window's share of a pair)."""
        with self.length_lock:
            ids = self.length_tokenizer(
                text, add_special_tokens=False, truncation=False, verbose=False
            )["input_ids"]
        return len(ids)


_MODELS: dict[tuple[Any, ...], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The process-wide pool of async cross-encoder calls, started on first use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(
                max_workers=inference_workers(), thread_name_prefix="llamaindex-rerankers-ce"
            )
        return _POOL


def _load_cross_encoder(settings: _ModelSettings) -> _LoadedModel:
    key = settings.key()
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        model = _load_uncached(settings)
        tokenizer = getattr(model, "tokenizer", None)
        loaded = _LoadedModel(
            model=model, length_tokenizer=None if tokenizer is None else copy.deepcopy(tokenizer)
        )
        # One tiny prediction before the model is shared: predict's truncation and padding are
        # then already set on the tokenizer, so that concurrent first calls do not all set them
        # while another thread is encoding.
        model.predict([("warm-up", "warm-up")], batch_size=1, show_progress_bar=False)
        _MODELS[key] = loaded
        return loaded


#: What each non-torch backend imports, and how to install it.
_BACKEND_PACKAGES = {
    "onnx": (
        ("onnxruntime", "optimum.onnxruntime"),
        "pip install 'sentence-transformers[onnx]' (or 'sentence-transformers[onnx-gpu]')",
    ),
    "openvino": (
        ("openvino", "optimum.intel"),
        "pip install 'sentence-transformers[openvino]'",
    ),
}


def _require_backend(backend: str) -> None:
    if backend not in _BACKEND_PACKAGES:
        return
    modules, install = _BACKEND_PACKAGES[backend]
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise ModelLoadError(
            f"CrossEncoderReranker(backend={backend!r}) needs {' and '.join(missing)}, which "
            f"could not be imported. Install them with: {install}; or use backend='torch'."
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package raises instead
        return False


def _load_uncached(settings: _ModelSettings) -> Any:
    name = settings.name
    how_to_fix = (
        f"Pass model='<hub id or local path>' to CrossEncoderReranker, or set "
        f"{CROSS_ENCODER_ENV}=<local path> to replace the default ({DEFAULT_CROSS_ENCODER})."
    )
    _require_backend(settings.backend)
    location = model_location(name, "Cross-encoder", how_to_fix, ModelLoadError)
    st = require("sentence_transformers")
    options: dict[str, Any] = {
        "device": settings.device,
        "max_length": settings.max_length,
        "trust_remote_code": settings.trust_remote_code,
        "revision": settings.revision,
        "backend": settings.backend,
    }
    # Copies: sentence-transformers writes max_length into the tokenizer options it is given.
    if settings.model_kwargs:
        options["model_kwargs"] = dict(settings.model_kwargs)
    if settings.tokenizer_kwargs:
        # sentence-transformers 6 calls them processor_kwargs (tokenizer_kwargs is deprecated).
        accepted = inspect.signature(st.CrossEncoder.__init__).parameters
        option = "processor_kwargs" if "processor_kwargs" in accepted else "tokenizer_kwargs"
        options[option] = dict(settings.tokenizer_kwargs)
    try:
        model = st.CrossEncoder(location, **options)
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
