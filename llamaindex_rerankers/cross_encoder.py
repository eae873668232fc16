"""Cross-encoder reranker: a sentence-transformers ``CrossEncoder`` scores (query, passage) pairs.

The model is loaded by sentence-transformers; inference is ours (``cross_encoder_backends``):
each call tokenizes its pairs once, which gives both the model inputs and the truncation flags,
then runs length-sorted batches through the model's forward pass (torch, under inference mode;
or ONNX Runtime on an export of the same model). ``precision="float32"`` on torch reproduces
``CrossEncoder.predict``'s logits (to 1e-5); the default ``precision="auto"`` is bfloat16 where
the hardware computes it natively. Identical passages are scored once. One loaded model serves
every instance, thread and task of the process (see :class:`CrossEncoderReranker`).

Why one module over 600 lines: the reranker's fields and their validation, model loading and its
checks, and the scoring path belong to one class; the runners (torch, ONNX) are in
cross_encoder_backends.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator, model_validator

from llamaindex_rerankers._imports import require
from llamaindex_rerankers._models import ModelLoadError, model_location
from llamaindex_rerankers.base import BaseReranker, Once
from llamaindex_rerankers.batch_hooks import current_batch_hook
from llamaindex_rerankers.cross_encoder_backends import (
    OnnxRunner,
    PairEncoder,
    TorchRunner,
    onnx_export,
    require_onnx,
    resolve_precision,
    torch_threads,
)
from llamaindex_rerankers.injection import flag_injections
from llamaindex_rerankers.scoring import sigmoid
from llamaindex_rerankers.types import CrossEncoderUsage, Judgement, RerankReport
from llamaindex_rerankers.windows import (
    DEFAULT_WINDOW_OVERLAP,
    LongText,
    Window,
    best_window,
    check_overlap,
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
    model; each such node gets ``rerank_truncated=True``, each call's report counts them
    (``report.cross_encoder.truncated``) and one warning is logged per instance (not per call).

    The model must be a cross-encoder: a model without a trained classification head (an
    embedding model, a base BERT), on which transformers would put a random one, raises
    :class:`ModelLoadError` when it loads. ``model`` may be a hub id, a path string or a
    ``pathlib.Path`` (stored as a string). Nodes without text (an image node, empty or
    whitespace text) are not scored: they stay unjudged (``score=None``), after the others.
    ``copy.deepcopy`` (or ``model_copy(deep=True)``) of a loaded reranker shares the loaded
    model; the copy's settings are its own.

    Long passages (``long_text="windows"``): a passage whose pair would be cut is split into
    overlapping windows that each fit ``max_length`` with the query and the special tokens
    (counted with the model's tokenizer); every window is scored and the passage gets its best
    window's score (MaxP). Such nodes carry ``rerank_windows`` (windows scored for it, 1 for a
    passage that fits) and ``rerank_best_window_offset`` (character offset of the best window in
    the passage text); ``report.cross_encoder.windows`` counts the window pairs.

    Untrusted corpora (``detect_injection=True``, off by default): passages with instructions
    aimed at a judge (:func:`~llamaindex_rerankers.injection.injection_signals`) get
    ``rerank_injection_suspected`` (and ``rerank_injection_signals``) in their metadata, and
    with ``suspected_penalty=1.0`` go after every clean passage. The model itself does not obey
    instructions; this is for what reads the top passages next (a response synthesizer, or the
    LLM stage of a cascade, which a demoted passage reaches only if there is room).

    Speed and precision: ``precision="auto"`` (the default) runs the torch model under bfloat16
    autocast where the hardware computes bfloat16 natively (CPUs with AMX-BF16 or AVX512-BF16,
    CUDA GPUs that support it) and in float32 elsewhere. It was chosen by measurement (SciFact
    and TREC DL 2019, BM25 top-100: ``benchmarks/results/cross_encoder_*.md``).
    ``precision="float32"`` is the exact path, equal to ``CrossEncoder.predict`` to 1e-5.
    ``backend="onnx"`` runs ONNX Runtime (CPU) on a graph exported from the same model, float32
    or ``quantize="int8"`` (dynamic int8); it needs the ``onnx`` extra, and is exported once and
    cached on disk (``$LLAMAINDEX_RERANKERS_CACHE``, default ``~/.cache/llamaindex-rerankers``,
    keyed by model, revision, settings and package versions), so later runs load it offline.
    ``backend="openvino"`` is not available: see the error it raises.

    Threads: ``threads=None`` leaves torch's and ONNX Runtime's own choice (all cores).
    ``threads=N`` sets ONNX Runtime's ``intra_op_num_threads`` (per loaded session) and, for the
    torch backend, ``torch.set_num_threads(N)`` in the calling thread for the duration of each
    call, restored afterwards. torch's setting is per OS thread plus a process-wide default that
    threads started meanwhile inherit; calls running in other threads keep theirs. Unless the
    environment sets ``OMP_WAIT_POLICY``, the package sets it to ``PASSIVE`` before it first
    loads torch (idle OpenMP threads sleep instead of spinning): with spinning threads, a call
    made while other processes keep the cores busy ran many times slower
    (``benchmarks/results/cross_encoder_threads.md``). An application that imports torch
    first keeps its own setting.

    Models are loaded once per process and shared by every instance with the same model, device,
    max_length, trust_remote_code, revision, backend, quantize, model_kwargs and tokenizer_kwargs
    (and, for ONNX, threads); precision is per call, not another model.

    Concurrency: one instance (and one loaded model) serves many threads and asyncio tasks at
    once; each call gets exactly the result it would get alone. Every call tokenizes with a
    private copy of the model's tokenizer under its own lock (a fast tokenizer's truncation and
    padding settings are shared state), and the forward passes run unlocked (a torch module in
    inference mode and an ONNX Runtime session both serve concurrent callers). Sync calls run in
    the calling thread. Async calls (``arerank``, ``apostprocess_nodes``) run in a process-wide
    pool of ``$LLAMAINDEX_RERANKERS_CE_WORKERS`` threads (default 2, read when the first async
    call starts the pool), so that 64 concurrent tasks queue for the model instead of starting 64
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
        description="Hugging Face hub id or local path (str or os.PathLike, stored as str) of a "
        "one-logit cross-encoder. Default: "
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
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Arithmetic for inference on the torch backend. 'auto': bfloat16 autocast "
        "where the hardware computes bfloat16 natively (AMX/AVX512-BF16 CPUs, CUDA GPUs that "
        "support it), float32 elsewhere; 'float32': exact, equal to CrossEncoder.predict; "
        "'bfloat16': torch autocast everywhere (logits differ in the 2nd-3rd digit).",
    )
    quantize: Literal["none", "int8"] = Field(
        default="none",
        description="backend='onnx' only: 'int8' runs a dynamically quantized export (int8 "
        "MatMul weights, per channel); it trades accuracy for speed: see the cross-encoder guide "
        "before using it.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="Intra-op threads: ONNX Runtime's intra_op_num_threads, and torch's "
        "set_num_threads in the calling thread during each call (restored after). None leaves "
        "each library's default (all cores).",
    )
    detect_injection: bool = Field(
        default=False,
        description="Flag passages with instruction-like text (injection.injection_signals) "
        "as rerank_injection_suspected in the node metadata, for untrusted corpora whose top "
        "passages go on to an LLM. Off by default: a cross-encoder does not obey instructions, "
        "and the detector costs a few ms per 1,000 characters (see the prompt-injection guide).",
    )
    suspected_penalty: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="A suspected passage's final score is multiplied by (1 - penalty), and it "
        "loses ties with unsuspected passages: 0 only flags, 1 (the default) puts it after "
        "every unsuspected passage. Needs detect_injection.",
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
        description="Inference backend: 'torch' (the model's forward pass), 'onnx' (ONNX Runtime "
        "on an export of the model, cached on disk; pip install 'llamaindex-rerankers[onnx]'). "
        "'openvino' raises: optimum-intel cannot be installed beside this package's "
        "transformers without breaking pip check.",
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

    #: The loaded model and the settings it was loaded for (a copy whose settings were then
    #: changed loads, or fetches, the model its own settings name).
    _loaded: tuple[tuple[Any, ...], _LoadedModel] | None = PrivateAttr(default=None)
    #: The truncation warning is logged once per instance; each call's report has the count.
    _truncation_warned: Once = PrivateAttr(default_factory=Once)

    @classmethod
    def class_name(cls) -> str:
        return "CrossEncoderReranker"

    @field_validator("model", mode="before")
    @classmethod
    def _model_path_as_str(cls, value: Any) -> Any:
        # A pathlib.Path (any os.PathLike) names a local model; stored as str so that the
        # configuration round-trips through to_dict / from_dict.
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("window_overlap")
    @classmethod
    def _check_window_overlap(cls, value: float) -> float:
        return check_overlap(value)

    @model_validator(mode="after")
    def _options_fit_the_backend(self) -> CrossEncoderReranker:
        if self.precision == "bfloat16" and self.backend != "torch":
            raise ValueError(
                f"precision='bfloat16' is torch autocast and does nothing on backend="
                f"{self.backend!r}; use precision='float32' (or 'auto'), or quantize='int8'."
            )
        if self.quantize != "none" and self.backend != "onnx":
            raise ValueError(
                f"quantize={self.quantize!r} needs backend='onnx' (the torch backend's fast path "
                "is precision='auto' or 'bfloat16')."
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
        settings = _ModelSettings(
            name=self.model,
            device=self.device,
            max_length=self.max_length,
            trust_remote_code=self.trust_remote_code,
            revision=self.revision,
            backend=self.backend,
            model_kwargs=self.model_kwargs,
            tokenizer_kwargs=self.tokenizer_kwargs,
            quantize=self.quantize,
            # Threads belong to an ONNX Runtime session; torch's are set per call.
            threads=self.threads if self.backend == "onnx" else None,
        )
        key = settings.key()
        held = self._loaded
        if held is not None and held[0] == key:
            return held[1]
        loaded = _load_cross_encoder(settings)
        self._loaded = (key, loaded)
        return loaded

    @property
    def effective_precision(self) -> str:
        """What ``precision`` resolves to on this backend and device ('float32' or 'bfloat16');
        loads the model to learn the device."""
        return resolve_precision(self.precision, self.backend, self._load().device_type)

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        started = time.perf_counter()
        loaded = self._load()
        # Identical passages (duplicated chunks, repeated hits) are scored once.
        unique = list(dict.fromkeys(texts))
        spans = _windows_of(loaded, query, unique, self.window_overlap, self.long_text)
        # Identical windows (of one passage or of two) are scored once too.
        pair_texts = list(dict.fromkeys(w.text for windows in spans for w in windows))
        precision = resolve_precision(self.precision, self.backend, loaded.device_type)
        with torch_threads(self.threads if self.backend == "torch" else None):
            logits, over_flags = loaded.score(query, pair_texts, self.batch_size, precision)
        over = dict(zip(pair_texts, over_flags, strict=True))
        cut = {t: any(over[w.text] for w in ws) for t, ws in zip(unique, spans, strict=True)}
        n_cut = sum(cut[t] for t in texts)
        # Once per instance: a loop over queries would repeat the same advice on every call;
        # each call's report still counts its truncated passages.
        if n_cut and self._truncation_warned.first():
            logger.warning(
                "%d of %d (query, passage) pairs exceed max_length=%s tokens and were truncated "
                "(see node metadata 'rerank_truncated' and report.cross_encoder.truncated; "
                "this warning is logged once per reranker); %s",
                n_cut,
                len(texts),
                loaded.max_length,
                _truncation_advice(loaded, query, self.long_text),
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
        judged = [
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
        if not self.detect_injection:
            return judged
        return flag_injections(texts, judged, self.suspected_penalty)

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
    limit = loaded.max_length
    if long_text != "windows" or limit is None:
        return [[Window(0, t)] for t in texts]
    # What the query and the special tokens leave of max_length for the passage.
    budget = int(limit) - loaded.encoder.pair_overhead(query)
    if budget < 1:  # the query alone fills max_length: nothing to window
        return [[Window(0, t)] for t in texts]
    return [split_windows(t, budget, loaded.encoder.count_tokens, overlap) for t in texts]


def _truncation_advice(loaded: _LoadedModel, query: str, long_text: str) -> str:
    """What to do about truncated pairs: windows split passages, so with them only a query
    that leaves no room for a window can be the cause."""
    if long_text != "windows":
        return "raise max_length, chunk documents smaller, or pass long_text='windows'."
    overhead = loaded.encoder.pair_overhead(query)
    if loaded.max_length is not None and overhead >= loaded.max_length:
        return (
            f"the query and special tokens alone take {overhead} of them, leaving no room for "
            "a window of passage text: shorten the query or raise max_length."
        )
    # Windows are sized by counting their tokens alone; a tokenizer that splits a text
    # differently inside the pair can leave a window a token or two over.
    return (
        "with long_text='windows' these are windows that tokenize longer inside the pair than "
        "alone (a token or two cut from their end); raise max_length to avoid it."
    )


def _best_window(
    windows: Sequence[Window], logits: dict[str, float], windowed: bool
) -> tuple[float, dict[str, Any]]:
    """MaxP: the best window's logit and, when windowing, its metadata."""
    best, metadata = best_window(windows, [logits[w.text] for w in windows])
    return logits[windows[best].text], metadata if windowed else {}


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
    quantize: str = "none"
    threads: int | None = None

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
            self.quantize,
            self.threads,
        )


@dataclass
class _LoadedModel:
    """A loaded ``CrossEncoder`` with what its concurrent callers need, cached together.

    ``model`` is the sentence-transformers ``CrossEncoder`` (torch), ``encoder`` tokenizes pairs
    with a private, locked copy of its tokenizer, ``runner`` computes logits (the torch model's
    forward pass, or an ONNX Runtime session on its export).
    """

    model: Any
    encoder: PairEncoder
    runner: TorchRunner | OnnxRunner
    max_length: int | None
    device_type: str

    def __deepcopy__(self, memo: dict[int, Any]) -> _LoadedModel:
        # Shared, never copied: it is the process-wide cached model (read-only to its users),
        # and its tokenizer lock cannot be copied. A deep copy of a reranker reuses it.
        return self

    def score(
        self, query: str, texts: Sequence[str], batch_size: int, precision: str
    ) -> tuple[list[float], list[bool]]:
        """The raw logit of each (query, text) pair and whether the pair was truncated, in input
        order. One tokenizer call for all pairs; length-sorted, individually padded batches."""
        if not texts:
            return [], []
        hook = current_batch_hook()  # the call's own (a server's turns and cancellation)
        encoded = self.encoder.encode(query, texts)
        logits = [0.0] * len(texts)
        for idx, arrays in self.encoder.batches(encoded, batch_size):
            if hook is None:
                values = self.runner.logits(arrays, precision)
            else:
                # Between batches: where a call nobody waits for stops, and where a long call
                # lets other calls' batches through.
                ids = arrays["input_ids"]
                hook.before_batch(len(idx), int(ids.shape[0] * ids.shape[1]))
                try:
                    values = self.runner.logits(arrays, precision)
                finally:
                    hook.after_batch()
            for i, value in zip(idx, values, strict=True):
                logits[i] = value
        return logits, encoded.truncated


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
        if tokenizer is None:
            raise ModelLoadError(
                f"Cross-encoder {settings.name!r} has no tokenizer; CrossEncoderReranker needs a "
                "text cross-encoder with a Hugging Face tokenizer."
            )
        limit = model.max_seq_length
        encoder = PairEncoder(tokenizer, None if limit is None else int(limit))
        runner: TorchRunner | OnnxRunner
        if settings.backend == "onnx":
            path = onnx_export(
                model.model,
                encoder.input_names,
                _location(settings.name),
                revision=settings.revision,
                settings={
                    "trust_remote_code": settings.trust_remote_code,
                    "model_kwargs": settings.model_kwargs,
                },
                quantize=settings.quantize,
            )
            runner = OnnxRunner(path, settings.threads)
        else:
            model.model.eval()
            runner = TorchRunner(model.model, model.device)
        loaded = _LoadedModel(
            model=model,
            encoder=encoder,
            runner=runner,
            max_length=encoder.max_length,
            device_type="cpu" if settings.backend == "onnx" else model.device.type,
        )
        _MODELS[key] = loaded
        return loaded


#: Why backend="openvino" is refused (sentence-transformers' OpenVINO backend is optimum-intel).
OPENVINO_UNAVAILABLE = (
    "CrossEncoderReranker(backend='openvino') is not available: sentence-transformers' OpenVINO "
    "backend needs optimum-intel, whose newest release (2.2.0) requires transformers<5.6, and "
    "this package needs the transformers that sentence-transformers 6 brings (5.x, newer here); "
    "pip installs them together only by breaking one. Use backend='onnx' "
    "(pip install 'llamaindex-rerankers[onnx]') or backend='torch' with precision='auto'."
)


def _location(name: str) -> str:
    """A local model's absolute path, or the hub id (the ONNX cache key's model part)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _load_uncached(settings: _ModelSettings) -> Any:
    name = settings.name
    how_to_fix = (
        f"Pass model='<hub id or local path>' to CrossEncoderReranker, or set "
        f"{CROSS_ENCODER_ENV}=<local path> to replace the default ({DEFAULT_CROSS_ENCODER})."
    )
    if settings.backend == "openvino":
        raise ModelLoadError(OPENVINO_UNAVAILABLE)
    if settings.backend == "onnx":
        require_onnx()  # before the (slow) model load
    location = model_location(name, "Cross-encoder", how_to_fix, ModelLoadError)
    st = require("sentence_transformers")
    options: dict[str, Any] = {
        "device": settings.device,
        "max_length": settings.max_length,
        "trust_remote_code": settings.trust_remote_code,
        "revision": settings.revision,
        # Always the torch model: the ONNX graph is exported from it (cross_encoder_backends).
        "backend": "torch",
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
    _check_trained_head(model.model, name, how_to_fix)
    if model.num_labels != 1:
        raise ModelLoadError(
            f"Cross-encoder {name!r} has {model.num_labels} output labels; CrossEncoderReranker "
            f"needs a one-logit relevance model (num_labels=1). {how_to_fix}"
        )
    return model


#: What a model must be saved as: a transformers sequence-classification model.
_CLASSIFIER_SUFFIX = "ForSequenceClassification"


def _check_trained_head(hf_model: Any, name: str, how_to_fix: str) -> None:
    """Refuse a model whose classification head was not in its checkpoint.

    Loading any encoder (an embedding model, a base BERT) as a cross-encoder "works": transformers
    puts a randomly initialised head on it, so the scores are noise (about 0.5) and differ
    between processes. Two signals, either is enough: the config's ``architectures`` (what the
    model was saved as) names no ``*ForSequenceClassification`` class; or head parameters were
    left without transformers' "loaded from the checkpoint" mark (``_is_hf_initialized``, read
    only when the loaded weights carry it, so that a transformers without it cannot trip this).

    Raises:
        ModelLoadError: saying what the model is and what to pass instead.
    """
    config = getattr(hf_model, "config", None)
    saved_as = list(getattr(config, "architectures", None) or [])
    pass_instead = (
        "CrossEncoderReranker needs a cross-encoder: a sequence-classification model with a "
        "trained one-logit head, such as cross-encoder/ms-marco-MiniLM-L-6-v2. "
        "(An embedding model belongs in the pipeline's embed_model, not here.) " + how_to_fix
    )
    if saved_as and not any(a.endswith(_CLASSIFIER_SUFFIX) for a in saved_as):
        raise ModelLoadError(
            f"{name!r} is not a cross-encoder: it was saved as {', '.join(saved_as)}, without "
            "a classification head, so transformers would add a randomly initialised one and "
            f"every score would be noise. {pass_instead}"
        )
    params = list(hf_model.named_parameters())
    if not any(getattr(p, "_is_hf_initialized", False) for _, p in params):
        return  # this transformers does not mark loaded weights: nothing more to read
    prefix = f"{getattr(hf_model, 'base_model_prefix', '')}."
    fresh = [
        n
        for n, p in params
        if not n.startswith(prefix) and not getattr(p, "_is_hf_initialized", False)
    ]
    if fresh:
        raise ModelLoadError(
            f"{name!r} has no trained classification head: {', '.join(fresh)} not in the "
            "checkpoint, so transformers initialised them randomly and every score would be "
            f"noise. {pass_instead}"
        )
