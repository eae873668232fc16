"""Embedding models for the pipeline: which one by default, and one loaded copy per process.

Embeddings always come from a LlamaIndex embedding model (by default ``HuggingFaceEmbedding``),
never from Chroma's own default embedding function, which would download a model.

Example:
    >>> from llamaindex_rerankers.pipeline import make_embed_model
    >>> embed = make_embed_model("/models/all-MiniLM-L6-v2")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from llamaindex_rerankers._imports import require
from llamaindex_rerankers._models import ModelLoadError, model_location

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding

DEFAULT_EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Environment variable naming a model id or local path that replaces the default embedding model.
EMBED_MODEL_ENV = "LLAMAINDEX_RERANKERS_EMBED_MODEL"


class EmbedModelLoadError(ModelLoadError):
    """The embedding model could not be loaded; the message says how to select another one."""


def default_embed_model() -> str:
    """The embedding model used when none is passed: ``$LLAMAINDEX_RERANKERS_EMBED_MODEL`` or
    the hub default.

    Example:
        >>> default_embed_model()  # doctest: +SKIP
        'sentence-transformers/all-MiniLM-L6-v2'
    """
    return os.environ.get(EMBED_MODEL_ENV) or DEFAULT_EMBED_MODEL


_EMBED_MODELS: dict[tuple[str, str | None], BaseEmbedding] = {}
_EMBED_LOCK = threading.Lock()


def make_embed_model(model: str | None = None, *, device: str | None = None) -> BaseEmbedding:
    """A LlamaIndex ``HuggingFaceEmbedding``, loaded once per process per (model, device).

    Args:
        model: hub id or local path of a sentence-transformers model. ``None`` uses
            ``$LLAMAINDEX_RERANKERS_EMBED_MODEL`` if set, else
            ``sentence-transformers/all-MiniLM-L6-v2``.
        device: torch device ('cpu', 'cuda', ...); ``None`` picks automatically.

    Returns:
        The embedding model (shared by every caller asking for the same model and device).

    Raises:
        EmbedModelLoadError: the model cannot be loaded (offline, wrong path); the message names
            the ``model`` argument and the environment variable.

    Example:
        >>> embed = make_embed_model("/models/all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> len(embed.get_text_embedding("pruning apple trees"))  # doctest: +SKIP
        384
    """
    name = model or default_embed_model()
    key = (name, device)
    with _EMBED_LOCK:
        if key not in _EMBED_MODELS:
            _EMBED_MODELS[key] = _load_embed_model(name, device)
        return _EMBED_MODELS[key]


def _load_embed_model(name: str, device: str | None) -> BaseEmbedding:
    how_to_fix = (
        f"Pass model='<hub id or local path>' to make_embed_model (or embed_model=... to the "
        f"index functions), or set {EMBED_MODEL_ENV}=<local path> to replace the default "
        f"({DEFAULT_EMBED_MODEL})."
    )
    location = model_location(name, "Embedding model", how_to_fix, EmbedModelLoadError)
    hf_embedding = require("llama_index.embeddings.huggingface").HuggingFaceEmbedding
    try:
        embed: BaseEmbedding = hf_embedding(model_name=location, device=device)
    except Exception as exc:  # hub/network/format errors come in many types
        raise EmbedModelLoadError(
            f"Could not load embedding model {name!r} ({type(exc).__name__}: {exc}). {how_to_fix}"
        ) from exc
    return embed


def _embed_model_name(embed_model: BaseEmbedding) -> str:
    """The name recorded with a collection and in fingerprints (the model id, else the class)."""
    return str(getattr(embed_model, "model_name", None) or type(embed_model).__name__)
