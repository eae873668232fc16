"""The chatbot backend: ``llamaindex-rerankers serve`` and :func:`create_app` for your own app.

Importing this package is light (no FastAPI, no models) so that the command line can build its
parser from :mod:`~llamaindex_rerankers.server.settings`; ``create_app`` and ``Backend`` import
FastAPI when first used, and raise an ImportError naming the ``server`` extra without it.

Example:
    >>> from llamaindex_rerankers.server import ServerSettings, create_app
    >>> app = create_app(ServerSettings(persist_dir="./chroma", reranker="cross-encoder"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamaindex_rerankers.server.settings import ServerSettings

if TYPE_CHECKING:
    from llamaindex_rerankers.server.app import create_app
    from llamaindex_rerankers.server.backend import Backend

__all__ = ["Backend", "ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "Backend"):
        from llamaindex_rerankers._imports import require

        for module in ("fastapi", "uvicorn", "prometheus_client"):
            require(module)
        if name == "create_app":
            from llamaindex_rerankers.server.app import create_app

            return create_app
        from llamaindex_rerankers.server.backend import Backend

        return Backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
