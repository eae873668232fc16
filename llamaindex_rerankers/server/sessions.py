"""Server-side chat sessions: in the process (:class:`SessionStore`) or in Redis, shared by
every replica (:class:`RedisSessionStore`), with the same bounds: at most ``max_sessions``
sessions (the least recently used goes first), ``max_messages`` messages each (the oldest go
first), each forgotten ``ttl`` seconds after its last use.

The routes use the async methods (:meth:`~SessionStore.ahistory`, :meth:`~SessionStore.aappend`).
A Redis store that cannot reach Redis raises :class:`SessionsUnavailable`, which the chat route
answers with 503 and Retry-After; requests that carry their own ``messages`` need no store.

Example:
    >>> store = open_session_store("memory", max_sessions=10, ttl=60.0, max_messages=4)
    >>> type(store).__name__
    'SessionStore'
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llamaindex_rerankers import _redis

logger = logging.getLogger(__name__)

Message = dict[str, str]


class SessionsUnavailable(Exception):
    """The session store cannot be reached (Redis down or not answering in time)."""


@dataclass
class _Session:
    messages: list[Message] = field(default_factory=list)
    expires: float = 0.0


class SessionStore:
    """Server-side chat histories in this process: bounded in number (least recently used
    evicted), in length (oldest messages dropped) and in time (``ttl`` seconds since last use).

    Example:
        >>> store = SessionStore(max_sessions=2, ttl=60.0, max_messages=4)
        >>> store.append("s1", [{"role": "user", "content": "hi"}])
        >>> store.history("s1")
        [{'role': 'user', 'content': 'hi'}]
    """

    def __init__(
        self,
        *,
        max_sessions: int,
        ttl: float,
        max_messages: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.ttl = ttl
        self.max_messages = max_messages
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._sessions)

    def history(self, session_id: str) -> list[Message]:
        """A copy of the session's messages (empty for an unknown or expired session)."""
        self._expire()
        session = self._sessions.get(session_id)
        if session is None:
            return []
        self._touch(session_id, session)
        return [dict(m) for m in session.messages]

    def append(self, session_id: str, messages: list[Message]) -> None:
        """Add messages to a session (created when new), keeping the newest ``max_messages``."""
        self._expire()
        session = self._sessions.get(session_id) or _Session()
        session.messages = (session.messages + [dict(m) for m in messages])[-self.max_messages :]
        self._touch(session_id, session)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    async def ahistory(self, session_id: str) -> list[Message]:
        """:meth:`history` (no I/O: it never waits)."""
        return self.history(session_id)

    async def aappend(self, session_id: str, messages: list[Message]) -> None:
        """:meth:`append` (no I/O: it never waits)."""
        self.append(session_id, messages)

    def _touch(self, session_id: str, session: _Session) -> None:
        session.expires = self._clock() + self.ttl
        self._sessions[session_id] = session
        self._sessions.move_to_end(session_id)

    def _expire(self) -> None:
        now = self._clock()
        # Ordered by last use, so the expired ones are at the front.
        while self._sessions:
            oldest_id, oldest = next(iter(self._sessions.items()))
            if oldest.expires > now:
                break
            del self._sessions[oldest_id]


class RedisSessionStore:
    """Chat histories in Redis, shared by every replica that points at it, with the bounds of
    :class:`SessionStore`: a session is a list (``RPUSH`` + ``LTRIM`` to ``max_messages``,
    ``EXPIRE`` ``ttl`` at every use) and a sorted set of session ids by last use evicts the
    least recently used beyond ``max_sessions``. Each call is one pipeline (a transaction) on
    redis' asyncio client, on the caller's event loop.

    Redis down or slow raises :class:`SessionsUnavailable` (one WARNING per outage; for a
    second after a failure calls fail at once instead of waiting for a timeout).

    Args:
        spec: ``redis://HOST[:PORT][/DB][?timeout=SECONDS]`` (no credentials: see
            :mod:`llamaindex_rerankers._redis`); a ``ttl=`` in it is refused, the TTL is
            ``ttl``.
        max_sessions: sessions kept.
        ttl: seconds a session lives unused.
        max_messages: messages kept per session.
        prefix: the start of every key.

    Example:
        >>> store = RedisSessionStore("redis://127.0.0.1:6379/0", max_sessions=1000,
        ...                           ttl=1800.0, max_messages=40)  # doctest: +SKIP
    """

    def __init__(
        self,
        spec: str,
        *,
        max_sessions: int,
        ttl: float,
        max_messages: int,
        prefix: str = "llamaindex-rerankers:session:",
    ) -> None:
        self.spec = _check_spec(spec)
        _redis.check_installed()
        self.max_sessions = max_sessions
        self.ttl = ttl
        self.max_messages = max_messages
        self.prefix = prefix
        self._index = prefix + "index"
        self._clients = _redis.LoopClients(self.spec)
        self._outage = _redis.Outage("server-side chat sessions (session_id)", self.spec, logger)
        self._count = 0

    def __len__(self) -> int:
        """Sessions alive as this process last saw them (no round trip: a metrics gauge)."""
        return self._count

    @property
    def available(self) -> bool:
        """Whether the last call reached Redis."""
        return not self._outage.down

    async def ahistory(self, session_id: str) -> list[Message]:
        """The session's messages (empty for an unknown or expired one); marks it used.

        Raises:
            SessionsUnavailable: Redis cannot be reached.
        """
        key = self.prefix + session_id
        now = time.time()
        expired = now - self.ttl

        async def read(client: Any) -> list[Message]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.lrange(key, 0, -1)
                pipe.expire(key, self._seconds)
                pipe.zadd(self._index, {session_id: now}, xx=True)
                pipe.zremrangebyscore(self._index, "-inf", expired)
                pipe.zcard(self._index)
                raw, _, _, _, count = await pipe.execute()
            self._count = int(count)
            return [m for m in (_message(item) for item in raw) if m is not None]

        return await self._call(read)

    async def aappend(self, session_id: str, messages: list[Message]) -> None:
        """Add messages to a session (created when new), keeping the newest ``max_messages``;
        evicts the least recently used sessions beyond ``max_sessions``.

        Raises:
            SessionsUnavailable: Redis cannot be reached.
        """
        if not messages:
            return
        key = self.prefix + session_id
        now = time.time()

        async def write(client: Any) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *(json.dumps(dict(m)) for m in messages))
                pipe.ltrim(key, -self.max_messages, -1)
                pipe.expire(key, self._seconds)
                pipe.zadd(self._index, {session_id: now})
                pipe.zremrangebyscore(self._index, "-inf", now - self.ttl)
                pipe.zcard(self._index)
                *_, count = await pipe.execute()
            extra = int(count) - self.max_sessions
            if extra > 0:
                # Another replica may evict at the same time: at worst a session or two more
                # than needed go, never one fewer.
                oldest = await client.zpopmin(self._index, extra)
                await client.delete(*(self.prefix + _text(name) for name, _ in oldest))
            self._count = min(int(count), self.max_sessions)

        await self._call(write)

    @property
    def _seconds(self) -> int:
        return max(1, math.ceil(self.ttl))

    async def _call(self, body: Callable[[Any], Any]) -> Any:
        if not self._outage.should_try():
            raise SessionsUnavailable("the session store (Redis) is unreachable")
        try:
            result = await body(self._clients.client())
        except _redis.errors() as exc:
            self._outage.failed(exc)
            raise SessionsUnavailable("the session store (Redis) is unreachable") from exc
        self._outage.succeeded()
        return result

    def __repr__(self) -> str:
        return f"RedisSessionStore({str(self.spec)!r})"


def _check_spec(spec: str) -> _redis.RedisSpec:
    parsed = _redis.parse_redis_spec(spec, setting="session_store")
    if parsed.ttl is not None:
        raise ValueError(
            f"session_store={spec!r}: sessions expire after session_ttl (--session-ttl), not "
            "a ttl= in the URL; remove it"
        )
    return parsed


def check_session_store(spec: str) -> str:
    """``spec`` if it names a session store (``"memory"`` or a Redis URL); raises otherwise.

    Example:
        >>> check_session_store("redis://127.0.0.1:6379/1")
        'redis://127.0.0.1:6379/1'
    """
    if spec == "memory":
        return spec
    if not _redis.is_redis_spec(spec):
        raise ValueError(
            f"must be 'memory' (this process) or a Redis URL 'redis://HOST:PORT/DB' shared by "
            f"replicas, got {spec!r}"
        )
    _check_spec(spec)
    return spec


def open_session_store(
    spec: str, *, max_sessions: int, ttl: float, max_messages: int
) -> SessionStore | RedisSessionStore:
    """The store ``spec`` names: ``"memory"`` or ``redis://HOST:PORT/DB``."""
    check_session_store(spec)
    if spec == "memory":
        return SessionStore(max_sessions=max_sessions, ttl=ttl, max_messages=max_messages)
    return RedisSessionStore(spec, max_sessions=max_sessions, ttl=ttl, max_messages=max_messages)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _message(raw: bytes | str) -> Message | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None  # a damaged entry is left out, not a failed chat
    if not isinstance(data, dict):
        return None
    return {str(k): str(v) for k, v in data.items()}
