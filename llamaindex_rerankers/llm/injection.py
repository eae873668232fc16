"""Moved: the answer codes and datamarking are :mod:`llamaindex_rerankers.llm.codes`, the
detector is :mod:`llamaindex_rerankers.injection`; this module re-exports both so that older
imports keep working."""

from __future__ import annotations

from llamaindex_rerankers.injection import SIGNALS, injection_signals, looks_injected
from llamaindex_rerankers.llm.codes import CODE_POOL, DEFAULT_SALT, datamark, draw_codes, relabel

__all__ = [
    "CODE_POOL",
    "DEFAULT_SALT",
    "SIGNALS",
    "datamark",
    "draw_codes",
    "injection_signals",
    "looks_injected",
    "relabel",
]
