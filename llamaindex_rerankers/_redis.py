"""The one door to Redis: URL specs, clients with short timeouts, and outages logged once.

Redis holds what replicas of ``serve`` (or any processes) share: LLM judgements
(:class:`~llamaindex_rerankers.llm.cache.RedisCache`) and chat sessions
(:class:`~llamaindex_rerankers.server.sessions.RedisSessionStore`). Only this module imports
``redis`` (the ``redis`` extra), lazily.

A spec is ``redis://HOST[:PORT][/DB][?ttl=SECONDS&timeout=SECONDS]`` (``rediss://`` for TLS).
It never holds credentials: a spec is configuration, written by ``to_dict``, pickles, logs and
the server's settings page, so a password in it would leak there. The password (and a user
name, for Redis ACLs) come from ``$LLAMAINDEX_RERANKERS_REDIS_PASSWORD`` and
``$LLAMAINDEX_RERANKERS_REDIS_USERNAME`` instead, read when connecting.

Example:
    >>> spec = parse_redis_spec("redis://127.0.0.1:6379/2?ttl=3600")
    >>> spec.url, spec.ttl, spec.timeout
    ('redis://127.0.0.1:6379/2', 3600.0, 0.5)
    >>> str(spec)
    'redis://127.0.0.1:6379/2?ttl=3600'
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

#: URL schemes of a Redis spec.
SCHEMES = ("redis", "rediss")
#: Seconds to connect and to wait for an answer, unless the spec says ``timeout=``: short, since
#: Redis is a cache and a session store on the request path, not a database worth waiting for.
DEFAULT_TIMEOUT = 0.5
PASSWORD_VARIABLE = "LLAMAINDEX_RERANKERS_REDIS_PASSWORD"
USERNAME_VARIABLE = "LLAMAINDEX_RERANKERS_REDIS_USERNAME"
#: Seconds an outage lets pass before the next attempt (calls in between skip Redis at once
#: instead of each waiting for a timeout).
RETRY_INTERVAL = 1.0

_QUERY = {"ttl", "timeout"}


def is_redis_spec(value: object) -> bool:
    """Whether ``value`` is a string starting with ``redis://`` or ``rediss://``.

    Example:
        >>> is_redis_spec("redis://h/0"), is_redis_spec("judgements.sqlite")
        (True, False)
    """
    return isinstance(value, str) and value.lower().startswith(tuple(s + "://" for s in SCHEMES))


@dataclass(frozen=True)
class RedisSpec:
    """A parsed Redis spec (see :func:`parse_redis_spec`).

    Attributes:
        url: ``redis://host:port/db``, without credentials or options.
        ttl: seconds an entry lives (``None``: until Redis evicts it).
        timeout: seconds to connect and per command.
    """

    url: str
    ttl: float | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __str__(self) -> str:
        options = []
        if self.ttl is not None:
            options.append(f"ttl={_number(self.ttl)}")
        if self.timeout != DEFAULT_TIMEOUT:
            options.append(f"timeout={_number(self.timeout)}")
        return self.url + ("?" + "&".join(options) if options else "")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def parse_redis_spec(spec: str, *, setting: str = "cache") -> RedisSpec:
    """Parse ``redis://HOST[:PORT][/DB][?ttl=S&timeout=S]``.

    Args:
        spec: the spec.
        setting: the setting's name, for error messages.

    Raises:
        ValueError: not a Redis URL, credentials in it, a bad database number, or an unknown
            or bad option; the message says how to fix it.

    Example:
        >>> parse_redis_spec("redis://cache.internal").url
        'redis://cache.internal:6379/0'
    """
    where = f"{setting}={spec!r}"
    if not is_redis_spec(spec):
        raise ValueError(f"{where}: a Redis spec starts with redis:// or rediss://")
    parts = urlsplit(spec)
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{setting}=<a redis:// URL with credentials>: a password in the URL would be "
            "written wherever the setting is (to_dict, pickles, logs, the server's settings). "
            f"Give the URL without it and set ${PASSWORD_VARIABLE} (and ${USERNAME_VARIABLE} "
            "for a Redis ACL user) in the environment instead."
        )
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{where}: the port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{where}: no host; e.g. redis://127.0.0.1:6379/0")
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"{where}: the path must be a database number, e.g. /0, got /{db_text}")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - _QUERY)
    if unknown:
        raise ValueError(
            f"{where}: unknown option {', '.join(unknown)}; the options are ttl=SECONDS "
            "(entries expire) and timeout=SECONDS (connect and command timeout)"
        )
    ttl = _seconds(options["ttl"], where, "ttl") if "ttl" in options else None
    timeout = _seconds(options["timeout"], where, "timeout") if "timeout" in options else None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    url = f"{parts.scheme.lower()}://{host}:{port}/{int(db_text)}"
    return RedisSpec(url, ttl, DEFAULT_TIMEOUT if timeout is None else timeout)


def _seconds(text: str, where: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}: {name} must be a positive number of seconds, got {text!r}")
    return value


def _redis_asyncio() -> Any:
    try:
        import redis.asyncio
    except ImportError as exc:
        raise ImportError(
            "Redis needs the 'redis' package: pip install 'llamaindex-rerankers[redis]'"
        ) from exc
    return redis.asyncio


def check_installed() -> None:
    """Raise ``ImportError`` naming the extra when ``redis`` is not installed."""
    _redis_asyncio()


def errors() -> tuple[type[BaseException], ...]:
    """What an outage raises: Redis' own errors, sockets' and timeouts."""
    import redis.exceptions

    return (redis.exceptions.RedisError, OSError, TimeoutError)


def connect(spec: RedisSpec) -> Any:
    """A ``redis.asyncio.Redis`` client for the running event loop: short timeouts, no retries
    (the caller treats a failure as an outage), the password from the environment."""
    module = _redis_asyncio()
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return module.Redis.from_url(
        spec.url,
        password=os.environ.get(PASSWORD_VARIABLE) or None,
        username=os.environ.get(USERNAME_VARIABLE) or None,
        socket_timeout=spec.timeout,
        socket_connect_timeout=spec.timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


class LoopClients:
    """One asyncio client per event loop (a client's connections belong to the loop that made
    them), made again when the caller runs on another loop. Thread-safe.
    """

    def __init__(self, spec: RedisSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._held: tuple[asyncio.AbstractEventLoop, Any] | None = None

    def client(self) -> Any:
        """The client of the running loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            held = self._held
            if held is None or held[0] is not loop:
                held = (loop, connect(self.spec))
                self._held = held
            return held[1]


class Outage:
    """Whether Redis is reachable, as the last call found it: one WARNING when an outage
    begins, one INFO when it ends, nothing for the calls in between (which, for
    :data:`RETRY_INTERVAL` seconds after a failure, skip Redis without waiting for a timeout).

    Args:
        what: what Redis holds, for the log (``"the judgement cache"``).
        spec: the spec, for the log (never with credentials).
        logger: where to log.
    """

    def __init__(self, what: str, spec: RedisSpec, logger: logging.Logger) -> None:
        self.what = what
        self.spec = spec
        self.logger = logger
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_failure = 0.0

    @property
    def down(self) -> bool:
        """Whether the last call failed."""
        return self._down_since is not None

    def should_try(self) -> bool:
        """False while down and a failure was seen less than :data:`RETRY_INTERVAL` ago."""
        with self._lock:
            if self._down_since is None:
                return True
            return time.monotonic() - self._last_failure >= RETRY_INTERVAL

    def failed(self, error: BaseException) -> None:
        """Record a failed call (logged when it begins an outage)."""
        with self._lock:
            now = time.monotonic()
            self._last_failure = now
            began = self._down_since is None
            if began:
                self._down_since = now
        if began:
            self.logger.warning(
                "Redis at %s is unreachable (%s): %s is off until it answers again (logged "
                "once per outage)",
                self.spec, _describe(error), self.what,
            )  # fmt: skip

    def succeeded(self) -> None:
        """Record a call that worked (logged when it ends an outage)."""
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            self.logger.info(
                "Redis at %s answers again after %.1f s: %s is back",
                self.spec, time.monotonic() - since, self.what,
            )  # fmt: skip


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
