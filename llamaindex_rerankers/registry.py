"""Rerankers by name, for the CLI and for configuration files.

Each name maps to a small factory; adding a reranker is one line in :data:`_FACTORIES`.

Example:
    >>> from llamaindex_rerankers.registry import RERANKER_NAMES, make_reranker
    >>> RERANKER_NAMES
    ('none', 'cross-encoder')
    >>> make_reranker("none") is None
    True
    >>> reranker = make_reranker("cross-encoder", top_n=5, batch_size=16)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llama_index.core.postprocessor.types import BaseNodePostprocessor

Factory = Callable[..., BaseNodePostprocessor | None]


def _none(*, top_n: int | None = None, **options: Any) -> None:
    if options:
        raise ValueError(
            f"reranker 'none' takes no options, got {sorted(options)}; drop them or pick a "
            "reranker that uses them."
        )
    return None


def _cross_encoder(*, top_n: int | None = None, **options: Any) -> BaseNodePostprocessor:
    # Imported here so that reading the registry never loads a model class's module graph.
    from llamaindex_rerankers.cross_encoder import CrossEncoderReranker

    return CrossEncoderReranker(top_n=top_n, **options)


_FACTORIES: dict[str, Factory] = {
    "none": _none,
    "cross-encoder": _cross_encoder,
}

#: Names accepted by :func:`make_reranker`, in display order.
RERANKER_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def make_reranker(
    name: str, *, top_n: int | None = None, **options: Any
) -> BaseNodePostprocessor | None:
    """Build the reranker registered under ``name``.

    Args:
        name: one of :data:`RERANKER_NAMES`; ``"none"`` means "keep the retrieval order" and
            returns ``None`` (no postprocessor).
        top_n: number of nodes the reranker returns; ``None`` returns all of them.
        **options: keyword arguments of the reranker's class (for ``"cross-encoder"``: those of
            :class:`~llamaindex_rerankers.cross_encoder.CrossEncoderReranker`, e.g. ``model``,
            ``batch_size``, ``device``). The model is loaded on first use, not here.

    Returns:
        A node postprocessor, or ``None`` for ``"none"``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known names), or
            ``"none"`` was given options.

    Example:
        >>> make_reranker("cross-encoder", top_n=3).top_n
        3
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(RERANKER_NAMES)
        raise ValueError(f"unknown reranker {name!r}; choose one of: {known}.") from None
    return factory(top_n=top_n, **options)
