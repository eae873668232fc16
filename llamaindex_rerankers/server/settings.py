"""Every setting of the chatbot backend, from arguments or ``LLAMAINDEX_RERANKERS_SERVE_*``.

One table (:class:`ServerSettings`' fields and their metadata) drives the environment variables,
the ``serve`` command's arguments and the documentation, so the three cannot drift apart.
Precedence: a command-line argument, then the environment variable, then the default.

This module imports nothing heavy (no FastAPI, no models): the command line reads it to build its
parser.

Example:
    >>> settings = ServerSettings.from_env({"LLAMAINDEX_RERANKERS_SERVE_TOP_N": "3"})
    >>> settings.top_n, settings.host
    (3, '127.0.0.1')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llamaindex_rerankers.registry import RERANKER_NAMES

#: Prefix of every environment variable the server reads.
ENV_PREFIX = "LLAMAINDEX_RERANKERS_SERVE_"
#: The rerankers the server offers: ours, from the one registry (the anchors are benchmarks).
SERVER_RERANKERS = RERANKER_NAMES


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError(f"must be a port number in 1..65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be more than 0, got {value}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be in [0, 1], got {value}")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


def _reranker(text: str) -> str:
    if text not in SERVER_RERANKERS:
        raise ValueError(f"must be one of {', '.join(SERVER_RERANKERS)}, got {text!r}")
    return text


def _setting(
    default: Any,
    help: str,
    parse: Callable[[str], Any] = str,
    *,
    env: bool = True,
    cli: bool = True,
    metavar: str | None = None,
    secret: bool = False,
) -> Any:
    """A settings field: its default, its help text, how to parse it from text, whether it has
    an environment variable (``ENV_PREFIX`` + NAME) and a command-line argument, and whether it
    is a secret (left out of ``repr``)."""
    return field(
        default=default,
        repr=not secret,
        metadata={"help": help, "parse": parse, "env": env, "cli": cli, "metavar": metavar},
    )


@dataclass(frozen=True)
class ServerSettings:
    """Settings of :func:`llamaindex_rerankers.server.create_app` and ``serve``.

    Every field is also ``$LLAMAINDEX_RERANKERS_SERVE_<FIELD NAME IN CAPITALS>`` (see
    :meth:`from_env`) and, except ``api_key``, a ``serve`` argument ``--field-name``. Models that
    are not set here use the library's own defaults and variables
    (``LLAMAINDEX_RERANKERS_CROSS_ENCODER``, ``LLAMAINDEX_RERANKERS_EMBED_MODEL``).

    Example:
        >>> ServerSettings(persist_dir="./chroma", top_n=3).top_k
        20
    """

    # -- where to listen
    host: str = _setting(
        "127.0.0.1",
        "listen address; the default serves this machine only. To expose the server, put a "
        "reverse proxy (TLS, auth) in front of it, or pass 0.0.0.0 knowingly",
        metavar="ADDR",
    )
    port: int = _setting(8000, "listen port", _port, metavar="P")

    # -- the index
    persist_dir: str | None = _setting(
        None, "folder of the embedded Chroma index (not needed with --chroma-host)", metavar="D"
    )
    collection: str | None = _setting(
        None, "Chroma collection name (default: llamaindex_rerankers)", metavar="C"
    )
    chroma_host: str | None = _setting(None, "use the Chroma server at this host", metavar="H")
    chroma_port: int = _setting(8000, "the Chroma server's port", _port, metavar="P")
    embed_model: str | None = _setting(
        None,
        "embedding model id or local path (default: $LLAMAINDEX_RERANKERS_EMBED_MODEL, else "
        "sentence-transformers/all-MiniLM-L6-v2); the one the index was built with",
        metavar="M",
    )

    # -- reranking
    reranker: str = _setting(
        "cross-encoder", f"reranker: {', '.join(SERVER_RERANKERS)}", _reranker, metavar="NAME"
    )
    cross_encoder_model: str | None = _setting(
        None,
        "cross-encoder id or local path (default: $LLAMAINDEX_RERANKERS_CROSS_ENCODER, else "
        "cross-encoder/ms-marco-MiniLM-L-6-v2)",
        metavar="M",
    )
    top_k: int = _setting(20, "first-stage candidates per question", _positive_int, metavar="K")
    top_n: int = _setting(5, "sources kept after reranking (at most K)", _positive_int, metavar="N")
    max_top_k: int = _setting(
        100, "largest top_k a request may ask for", _positive_int, metavar="K"
    )
    abstain_below: float = _setting(
        0.5,
        "answer 'nothing relevant' when no source's rerank score reaches this (0 never "
        "abstains; for the LLM reranker 0.5 is the 'likely' label)",
        _unit_float,
        metavar="S",
    )

    detect_injection: bool = _setting(
        True,
        "flag sources with instructions aimed at an LLM (prompt injection): they are marked, "
        "ranked last and kept out of the answer's context (--no-detect-injection: none of this)",
        _bool,
    )

    # -- the LLM endpoint (answers; LLM reranker and cascade)
    llm_base_url: str | None = _setting(
        None,
        "OpenAI-compatible endpoint ending in /v1 (default: OpenAI if OPENAI_API_KEY is set, "
        "else a local llama.cpp server started by `serve`)",
        metavar="URL",
    )
    llm_model: str | None = _setting(None, "model name at the endpoint", metavar="NAME")
    llm_api_key: str | None = _setting(
        None,
        "API key of the endpoint (default: $OPENAI_API_KEY)",
        env=False,
        metavar="KEY",
        secret=True,
    )
    answers: bool = _setting(
        True, "write answers with the LLM (--no-answers: /v1/chat answers 501)", _bool
    )
    answer_max_tokens: int = _setting(
        256, "most tokens an answer may have", _positive_int, metavar="T"
    )
    llm_context_window: int | None = _setting(
        None,
        "the answer model's context window in tokens (default: LlamaIndex's 3900; 2048 for "
        "the local server)",
        _positive_int,
        metavar="T",
    )
    llm_timeout: float = _setting(
        30.0, "seconds per LLM HTTP attempt", _positive_float, metavar="S"
    )
    llm_max_retries: int = _setting(
        2, "retries per LLM request (rate limits, 5xx, timeouts)", _non_negative_int, metavar="R"
    )
    llm_cache: str = _setting(
        "memory",
        "LLM judgement cache: memory, none, or a path to an SQLite file",
        metavar="SPEC",
    )
    llm_concurrency: int = _setting(
        8,
        "LLM judgements in flight at once, over all requests (the LLM reranker's limit)",
        _positive_int,
        metavar="N",
    )

    # -- serving many users
    max_concurrent: int = _setting(
        8,
        "/v1/retrieve and /v1/rerank requests processed at once",
        _positive_int,
        metavar="N",
    )
    max_queue: int = _setting(
        32,
        "requests allowed to wait for a slot; beyond it the answer is 503 with Retry-After",
        _non_negative_int,
        metavar="N",
    )
    max_chats: int = _setting(4, "/v1/chat requests answered at once", _positive_int, metavar="N")
    max_chat_queue: int = _setting(
        16, "chat requests allowed to wait; beyond it 503", _non_negative_int, metavar="N"
    )
    pool_threads: int = _setting(
        2,
        "threads for query embedding, Chroma and cross-encoder inference (off the event loop)",
        _positive_int,
        metavar="N",
    )
    request_timeout: float = _setting(
        60.0, "seconds allowed for a retrieve or rerank request", _positive_float, metavar="S"
    )
    chat_timeout: float = _setting(
        300.0, "seconds allowed for a whole chat answer", _positive_float, metavar="S"
    )
    retry_after: int = _setting(
        1, "seconds sent in Retry-After with a 503", _positive_int, metavar="S"
    )
    graceful_timeout: float = _setting(
        30.0,
        "on SIGTERM, seconds to let requests in flight finish before closing them",
        _positive_float,
        metavar="S",
    )

    # -- input limits
    max_query_chars: int = _setting(
        2000, "longest query or chat message, in characters", _positive_int, metavar="N"
    )
    max_messages: int = _setting(
        50, "most messages in one chat request", _positive_int, metavar="N"
    )
    max_documents: int = _setting(
        1000, "most documents in one /v1/rerank request", _positive_int, metavar="N"
    )
    max_document_chars: int = _setting(
        20000, "longest /v1/rerank document, in characters", _positive_int, metavar="N"
    )
    max_body_bytes: int = _setting(
        4_000_000, "largest request body, in bytes (413 beyond)", _positive_int, metavar="B"
    )

    # -- sessions
    session_ttl: float = _setting(
        1800.0, "seconds a server-side chat session lives unused", _positive_float, metavar="S"
    )
    max_sessions: int = _setting(
        1000, "sessions kept; the least recently used goes first", _positive_int, metavar="N"
    )
    max_session_messages: int = _setting(
        40, "messages kept per session (the oldest go first)", _positive_int, metavar="N"
    )

    # -- security
    api_key: str | None = _setting(
        None,
        "require `Authorization: Bearer <key>` on /v1/*, /v2/* and /metrics; from the "
        "environment only, never an argument (arguments show in process lists)",
        cli=False,
        secret=True,
    )
    cors_origins: tuple[str, ...] = _setting(
        (),
        "origins allowed by CORS, comma-separated (default: none, CORS off)",
        _origins,
        metavar="ORIGINS",
    )
    access_log: bool = _setting(True, "log one line per request (never headers)", _bool)

    def __post_init__(self) -> None:
        if self.top_n > self.top_k:
            raise ValueError(
                f"top_n ({self.top_n}) is larger than top_k ({self.top_k}); the reranker can "
                "only return candidates that retrieval found (raise top_k)"
            )
        if self.top_k > self.max_top_k:
            raise ValueError(f"top_k ({self.top_k}) is larger than max_top_k ({self.max_top_k})")
        if self.reranker not in SERVER_RERANKERS:
            raise ValueError(
                f"reranker must be one of {', '.join(SERVER_RERANKERS)}, got {self.reranker!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """Settings from ``LLAMAINDEX_RERANKERS_SERVE_*`` variables, then ``overrides`` on top
        (``None`` overrides are ignored, so unset command-line options fall through).

        Raises:
            ValueError: a variable does not parse; the message names it.

        Example:
            >>> ServerSettings.from_env({}, top_k=40).top_k
            40
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = env_name(f.name)
            if f.metadata.get("env") and env.get(name, "") != "":
                try:
                    values[f.name] = f.metadata["parse"](env[name])
                except ValueError as exc:
                    raise ValueError(f"${name}: {exc}") from None
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown server settings: {', '.join(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The settings as JSON-safe data, secrets replaced by whether they are set."""
        data = dataclasses.asdict(self)
        for secret in ("api_key", "llm_api_key"):
            data[secret] = "set" if data[secret] else None
        data["cors_origins"] = list(self.cors_origins)
        return data


def env_name(field_name: str) -> str:
    """The environment variable of a setting.

    Example:
        >>> env_name("max_queue")
        'LLAMAINDEX_RERANKERS_SERVE_MAX_QUEUE'
    """
    return ENV_PREFIX + field_name.upper()


def settings_table() -> list[dict[str, Any]]:
    """One row per setting: name, environment variable, argument, default, help (for docs)."""
    rows = []
    for f in dataclasses.fields(ServerSettings):
        rows.append(
            {
                "name": f.name,
                "env": env_name(f.name) if f.metadata.get("env") else None,
                "flag": "--" + f.name.replace("_", "-") if f.metadata.get("cli") else None,
                "default": f.default,
                "help": f.metadata.get("help", ""),
            }
        )
    return rows
