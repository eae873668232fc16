"""Moved to :mod:`llamaindex_rerankers.injection` (the detector serves both rerankers); this
module re-exports it so that older imports keep working."""

from __future__ import annotations

from llamaindex_rerankers.injection import (
    MAX_CHARS,
    META_TALK_THRESHOLD,
    SIGNALS,
    SIGNALS_KEY,
    SUSPECTED_KEY,
    flag_injections,
    injection_signals,
    looks_injected,
    meta_talk,
)

__all__ = [
    "MAX_CHARS",
    "META_TALK_THRESHOLD",
    "SIGNALS",
    "SIGNALS_KEY",
    "SUSPECTED_KEY",
    "flag_injections",
    "injection_signals",
    "looks_injected",
    "meta_talk",
]
