"""Every setting of the chatbot backend, from arguments or ``LLAMAINDEX_RERANKERS_SERVE_*``.

One table (:class:`ServerSettings`' pydantic fields: type, default, description) drives the
environment variables, the ``serve`` command's arguments and the documentation, so the three
cannot drift apart. Precedence: a command-line argument, then the environment variable, then the
default. pydantic-settings reads the variables; pydantic parses and checks every value.

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
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from llamaindex_rerankers.llm.cache import check_cache_spec
from llamaindex_rerankers.registry import REMOTE_APIS, RERANKER_NAMES
from llamaindex_rerankers.server.sessions import check_session_store

#: Prefix of every environment variable the server reads.
ENV_PREFIX = "LLAMAINDEX_RERANKERS_SERVE_"
#: The rerankers the server offers: ours, from the one registry (the anchors are benchmarks).
SERVER_RERANKERS: tuple[str, ...] = RERANKER_NAMES
# The same names as a type, for pydantic; kept equal to the registry's by the check below.
ServerReranker = Literal["none", "cross-encoder", "llm", "cascade", "remote"]
if get_args(ServerReranker) != SERVER_RERANKERS:  # pragma: no cover - a developer's slip
    raise RuntimeError("server.settings.ServerReranker must list registry.RERANKER_NAMES")
RemoteApi = Literal["cohere", "cohere-v1", "tei"]
if get_args(RemoteApi) != REMOTE_APIS:  # pragma: no cover - a developer's slip
    raise RuntimeError("server.settings.RemoteApi must list registry.REMOTE_APIS")


# pydantic converts the text; these only check bounds, in words that say what to pass (pydantic's
# own "Input should be greater than or equal to 1" does not say it is a port, or a probability).
def _positive_int(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(value: int) -> int:
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"must be a port number in 1..65535, got {value}")
    return value


def _positive_float(value: float) -> float:
    if not value > 0:
        raise ValueError(f"must be more than 0, got {value}")
    return value


def _unit_float(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be in [0, 1], got {value}")
    return value


def _bool(value: Any) -> Any:
    # pydantic also takes "t", "y", "n"...; the words we document are these.
    if not isinstance(value, str):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {value!r}")


def _origins(value: Any) -> Any:
    # A comma-separated list, not pydantic-settings' JSON for sequences (hence NoDecode).
    if isinstance(value, str):
        return tuple(o.strip() for o in value.split(",") if o.strip())
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], Any]:
    """A check that a text is one of ``choices``, in words that list them."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _cache(value: str) -> str:
    if value != "none":
        check_cache_spec(value)  # a bad Redis URL or an unsupported scheme fails at start-up
    return value


Port = Annotated[int, AfterValidator(_port)]
PositiveInt = Annotated[int, AfterValidator(_positive_int)]
NonNegativeInt = Annotated[int, AfterValidator(_non_negative_int)]
PositiveFloat = Annotated[float, AfterValidator(_positive_float)]
UnitFloat = Annotated[float, AfterValidator(_unit_float)]
Flag = Annotated[bool, BeforeValidator(_bool)]
Origins = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_origins)]
Reranker = Annotated[ServerReranker, BeforeValidator(_one_of(SERVER_RERANKERS))]
RemoteApiName = Annotated[RemoteApi, BeforeValidator(_one_of(REMOTE_APIS))]
CacheSpec = Annotated[str, AfterValidator(_cache)]
SessionStoreSpec = Annotated[str, AfterValidator(check_session_store)]


def _setting(
    default: Any,
    help: str,
    *,
    env: bool = True,
    cli: bool = True,
    metavar: str | None = None,
    secret: bool = False,
) -> Any:
    """A settings field: its default, its help text (the field's description), whether it has an
    environment variable (``ENV_PREFIX`` + NAME) and a command-line argument, the argument's
    metavar, and whether it is a secret (left out of ``repr``)."""
    extra: dict[str, Any] = {"env": env, "cli": cli, "metavar": metavar}
    return Field(default, description=help, json_schema_extra=extra, repr=not secret)


class ServerSettings(BaseSettings):
    """Settings of :func:`llamaindex_rerankers.server.create_app` and ``serve``.

    Every field is also ``$LLAMAINDEX_RERANKERS_SERVE_<FIELD NAME IN CAPITALS>`` (see
    :meth:`from_env`) and, except ``api_key``, a ``serve`` argument ``--field-name``. Models that
    are not set here use the library's own defaults and variables
    (``LLAMAINDEX_RERANKERS_CROSS_ENCODER``, ``LLAMAINDEX_RERANKERS_EMBED_MODEL``). The
    constructor takes its arguments only; :meth:`from_env` adds the environment. Immutable:
    ``dataclasses.replace(settings, top_n=3)`` or ``settings.model_copy(update=...)`` for a
    changed copy.

    Example:
        >>> ServerSettings(persist_dir="./chroma", top_n=3).top_k
        20
    """

    #: What ``dataclasses.fields`` reads (see :func:`_dataclass_fields`).
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    # hide_input_in_errors: a ValidationError's text would otherwise repeat every value given,
    # secrets included.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
    )

    # -- where to listen
    host: str = _setting(
        "127.0.0.1",
        "listen address; the default serves this machine only. To expose the server, put a "
        "reverse proxy (TLS, auth) in front of it, or pass 0.0.0.0 knowingly",
        metavar="ADDR",
    )
    port: Port = _setting(8000, "listen port", metavar="P")

    # -- the index
    persist_dir: str | None = _setting(
        None, "folder of the embedded Chroma index (not needed with --chroma-host)", metavar="D"
    )
    collection: str | None = _setting(
        None, "Chroma collection name (default: llamaindex_rerankers)", metavar="C"
    )
    chroma_host: str | None = _setting(None, "use the Chroma server at this host", metavar="H")
    chroma_port: Port = _setting(8000, "the Chroma server's port", metavar="P")
    embed_model: str | None = _setting(
        None,
        "embedding model id or local path (default: $LLAMAINDEX_RERANKERS_EMBED_MODEL, else "
        "sentence-transformers/all-MiniLM-L6-v2); the one the index was built with",
        metavar="M",
    )

    # -- reranking
    reranker: Reranker = _setting(
        "cross-encoder", f"reranker: {', '.join(SERVER_RERANKERS)}", metavar="NAME"
    )
    cross_encoder_model: str | None = _setting(
        None,
        "cross-encoder id or local path (default: $LLAMAINDEX_RERANKERS_CROSS_ENCODER, else "
        "cross-encoder/ms-marco-MiniLM-L-6-v2)",
        metavar="M",
    )
    remote_url: str | None = _setting(
        None,
        "rerank service root for --reranker remote, e.g. http://rerank:8080 (default: "
        "$LLAMAINDEX_RERANKERS_REMOTE_URL)",
        metavar="URL",
    )
    remote_api: RemoteApiName | None = _setting(
        None,
        f"the rerank service's API: {', '.join(REMOTE_APIS)} (default: "
        "$LLAMAINDEX_RERANKERS_REMOTE_API, else cohere)",
        metavar="API",
    )
    remote_model: str | None = _setting(
        None,
        "model name sent to the rerank service (default: $LLAMAINDEX_RERANKERS_REMOTE_MODEL)",
        metavar="M",
    )
    top_k: PositiveInt = _setting(20, "first-stage candidates per question", metavar="K")
    top_n: PositiveInt = _setting(5, "sources kept after reranking (at most K)", metavar="N")
    max_top_k: PositiveInt = _setting(100, "largest top_k a request may ask for", metavar="K")
    abstain_below: UnitFloat = _setting(
        0.5,
        "answer 'nothing relevant' when no source's rerank score reaches this (0 never "
        "abstains; for the LLM reranker 0.5 is the 'likely' label)",
        metavar="S",
    )

    detect_injection: Flag = _setting(
        True,
        "flag sources with instructions aimed at an LLM (prompt injection): they are marked, "
        "ranked last and kept out of the answer's context (--no-detect-injection: none of this)",
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
    answers: Flag = _setting(
        True, "write answers with the LLM (--no-answers: /v1/chat answers 501)"
    )
    answer_max_tokens: PositiveInt = _setting(256, "most tokens an answer may have", metavar="T")
    llm_context_window: PositiveInt | None = _setting(
        None,
        "the answer model's context window in tokens (default: LlamaIndex's 3900; 2048 for "
        "the local server)",
        metavar="T",
    )
    llm_timeout: PositiveFloat = _setting(
        30.0,
        "seconds per HTTP attempt of the LLM reranker (a chat's LLM calls get what is left of "
        "--chat-timeout instead)",
        metavar="S",
    )
    llm_max_retries: NonNegativeInt = _setting(
        2, "retries per LLM request (rate limits, 5xx, timeouts)", metavar="R"
    )
    llm_cache: CacheSpec = _setting(
        "memory",
        "LLM judgement cache: memory, none, a path to an SQLite file, or "
        "redis://HOST:PORT/DB[?ttl=SECONDS], shared by every replica that names it (password: "
        "$LLAMAINDEX_RERANKERS_REDIS_PASSWORD)",
        metavar="SPEC",
    )
    llm_concurrency: PositiveInt = _setting(
        8,
        "LLM judgements in flight at once, over all requests (the LLM reranker's limit)",
        metavar="N",
    )

    # -- serving many users
    max_concurrent: PositiveInt = _setting(
        8,
        "/v1/retrieve and /v1/rerank requests processed at once",
        metavar="N",
    )
    max_queue: NonNegativeInt = _setting(
        32,
        "requests allowed to wait for a slot; beyond it the answer is 503 with Retry-After",
        metavar="N",
    )
    max_queue_wait: PositiveFloat = _setting(
        # Measured (benchmarks/load_serve.py, 50 clients honouring Retry-After, quiet 2-core
        # machine, 2026-12-05): accepted 4-document reranks' p95 1.09 s at 1 s, 0.81 s at
        # 0.75 s, 0.57 s at 0.5 s; retrieves' 1.32 / 1.09 / 0.90 s; answers per second the same
        # (rerank 36.3 / 39.1 / 37.0, retrieve 3.65 / 3.66 / 3.63): a shorter bound only
        # refuses sooner what would have waited. The wait adds to the request's own work.
        0.5,
        "longest estimated wait (seconds of /v1/retrieve and /v1/rerank work admitted ahead, "
        "measured per token) a request is admitted with; beyond it the answer is 503 at once "
        "with a Retry-After computed from that work",
        metavar="S",
    )
    max_chats: PositiveInt = _setting(4, "/v1/chat requests answered at once", metavar="N")
    max_chat_queue: NonNegativeInt = _setting(
        16, "chat requests allowed to wait; beyond it 503", metavar="N"
    )
    pool_threads: PositiveInt = _setting(
        2,
        "forward passes (a batch of pairs, or a query embedding and search) computed at once; "
        "each request's batches take turns with other requests'",
        metavar="N",
    )
    request_timeout: PositiveFloat = _setting(
        60.0, "seconds allowed for a retrieve or rerank request", metavar="S"
    )
    chat_timeout: PositiveFloat = _setting(
        300.0,
        "seconds allowed for a whole chat response, its LLM calls included (cancelled when it "
        "runs out)",
        metavar="S",
    )
    retry_after: PositiveInt = _setting(1, "seconds sent in Retry-After with a 503", metavar="S")
    graceful_timeout: PositiveFloat = _setting(
        30.0,
        "on SIGTERM, seconds to let requests in flight finish before closing them",
        metavar="S",
    )

    # -- input limits
    max_query_chars: PositiveInt = _setting(
        2000, "longest query or chat message, in characters", metavar="N"
    )
    max_messages: PositiveInt = _setting(50, "most messages in one chat request", metavar="N")
    max_documents: PositiveInt = _setting(
        1000, "most documents in one /v1/rerank request", metavar="N"
    )
    max_document_chars: PositiveInt = _setting(
        20000, "longest /v1/rerank document, in characters", metavar="N"
    )
    max_body_bytes: PositiveInt = _setting(
        4_000_000, "largest request body, in bytes (413 beyond)", metavar="B"
    )

    # -- sessions
    session_ttl: PositiveFloat = _setting(
        1800.0, "seconds a server-side chat session lives unused", metavar="S"
    )
    max_sessions: PositiveInt = _setting(
        1000, "sessions kept; the least recently used goes first", metavar="N"
    )
    max_session_messages: PositiveInt = _setting(
        40, "messages kept per session (the oldest go first)", metavar="N"
    )
    session_store: SessionStoreSpec = _setting(
        "memory",
        "where chat sessions live: memory (this process) or redis://HOST:PORT/DB, shared by "
        "every replica and kept across restarts (password: $LLAMAINDEX_RERANKERS_REDIS_PASSWORD)",
        metavar="SPEC",
    )

    # -- security
    api_key: str | None = _setting(
        None,
        "require `Authorization: Bearer <key>` on /v1/*, /v2/* and /metrics; from the "
        "environment only, never an argument (arguments show in process lists)",
        cli=False,
        secret=True,
    )
    cors_origins: Origins = _setting(
        (),
        "origins allowed by CORS, comma-separated (default: none, CORS off)",
        metavar="ORIGINS",
    )
    access_log: Flag = _setting(True, "log one line per request (never headers)")

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.top_n > self.top_k:
            raise ValueError(
                f"top_n ({self.top_n}) is larger than top_k ({self.top_k}); the reranker can "
                "only return candidates that retrieval found (raise top_k)"
            )
        if self.top_k > self.max_top_k:
            raise ValueError(f"top_k ({self.top_k}) is larger than max_top_k ({self.max_top_k})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The constructor reads its arguments only (``ServerSettings(top_n=3)`` in a test or an
        # app is exactly that); from_env adds the variables of the mapping it is given.
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """Settings from ``LLAMAINDEX_RERANKERS_SERVE_*`` variables, then ``overrides`` on top
        (``None`` overrides are ignored, so unset command-line options fall through).

        Raises:
            ValueError: a value does not parse; the message names the variable or the setting.

        Example:
            >>> ServerSettings.from_env({}, top_k=40).top_k
            40
        """
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown server settings: {', '.join(unknown)}")
        source = _MappingEnvSource(cls, os.environ if environ is None else environ)
        from_env = {k: v for k, v in source().items() if _extra(k).get("env", True)}
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**{**from_env, **given})
        except ValidationError as exc:
            raise ValueError(_explain(exc, set(from_env) - set(given))) from None

    def public(self) -> dict[str, Any]:
        """The settings as JSON-safe data, secrets replaced by whether they are set."""
        data = self.model_dump(mode="json")
        for secret in ("api_key", "llm_api_key"):
            data[secret] = "set" if data[secret] else None
        return data


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    # The hook pydantic-settings' own dotenv source overrides to read another mapping.
    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            (name if self.case_sensitive else name.lower()): value
            for name, value in self._environ.items()
            if not (self.env_ignore_empty and value == "")
        }


def _extra(name: str) -> dict[str, Any]:
    extra = ServerSettings.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _message(error: Any) -> str:
    """One pydantic error in words: our validators' own message, else pydantic's and the input."""
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {error['input']!r}"


def _explain(exc: ValidationError, from_env: set[str]) -> str:
    """A ValidationError as one line per problem, each named by its variable or setting."""
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else None
        label = f"${env_name(name)}" if name in from_env else name
        parts.append(f"{label}: {_message(error)}" if label else _message(error))
    return "; ".join(parts)


def text_parser(name: str) -> Callable[[str], Any]:
    """A function turning a command-line value into the setting ``name``'s value, raising
    ``ValueError`` with the same words as a bad variable.

    Example:
        >>> text_parser("top_k")("40")
        40
    """
    info = ServerSettings.model_fields[name]
    kind: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    adapter: TypeAdapter[Any] = TypeAdapter(kind)

    def parse(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except ValidationError as exc:
            raise ValueError(_message(exc.errors()[0])) from None

    # argparse names the type in "invalid <name> value" messages.
    parse.__name__ = name
    return parse


def env_name(field_name: str) -> str:
    """The environment variable of a setting.

    Example:
        >>> env_name("max_queue")
        'LLAMAINDEX_RERANKERS_SERVE_MAX_QUEUE'
    """
    return ENV_PREFIX + field_name.upper()


def settings_table() -> list[dict[str, Any]]:
    """One row per setting: name, environment variable, argument, default, help (for docs)."""
    return [
        {
            "name": name,
            "env": env_name(name) if _extra(name).get("env", True) else None,
            "flag": "--" + name.replace("_", "-") if _extra(name).get("cli", True) else None,
            "default": info.default,
            "help": info.description or "",
        }
        for name, info in ServerSettings.model_fields.items()
    ]


def settings_markdown() -> str:
    """The settings as the Markdown table of the serving guide (a test keeps the two equal).

    Example:
        >>> settings_markdown().splitlines()[0]
        '| setting | argument | environment variable | default | meaning |'
    """
    lines = [
        "| setting | argument | environment variable | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for row in settings_table():
        flag = row["flag"]
        default = row["default"]
        if isinstance(default, bool):
            flag = f"{flag} / --no-{flag[2:]}" if flag else flag
            default = str(default).lower()
        elif default is None or default == ():
            default = "(none)"
        lines.append(
            f"| `{row['name']}` | `{flag or '–'}` | `{row['env'] or '–'}` | `{default}` "
            f"| {row['help']} |"
        )
    return "\n".join(lines) + "\n"


def _dataclass_fields() -> dict[str, dataclasses.Field[Any]]:
    """The fields as ``dataclasses.fields(ServerSettings)`` returns them, with the metadata
    (``help``, ``parse``, ``env``, ``cli``, ``metavar``) that ``serve``'s argument builder reads.

    So that code written for the dataclass API (``dataclasses.fields``, ``dataclasses.replace``)
    works on the class; new code reads :func:`settings_table` or ``model_fields``.
    """
    spec = []
    for row in settings_table():
        name = row["name"]
        info = ServerSettings.model_fields[name]
        metadata = {
            "help": row["help"],
            "parse": text_parser(name),
            "env": row["env"] is not None,
            "cli": row["flag"] is not None,
            "metavar": _extra(name).get("metavar"),
        }
        kind = info.annotation
        spec.append((name, kind, dataclasses.field(default=info.default, metadata=metadata)))
    shape: Any = dataclasses.make_dataclass("_Fields", spec)
    return dict(shape.__dataclass_fields__)


ServerSettings.__dataclass_fields__ = _dataclass_fields()
