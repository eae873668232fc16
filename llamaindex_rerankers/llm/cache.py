"""Caches of LLM judgements: a repeated (query, passage) makes no LLM call.

Key: (namespace, prompt key, sha256(query), sha256(passage)), see :func:`cache_key`. The
namespace names the judge: by default ``"base_url|model"``, or a stable name of the model
itself (a local server's ``"gguf-sha256:..."``, which stays the same when the server restarts on
another port). The prompt key holds the prompt version and a hash of the templates, labels and
examples. Value: a :class:`CachedJudgement`, the label probabilities (or the parsed label, as
probability 1) and where they came from. Judgements that failed are never cached.

Three implementations of the :class:`JudgementCache` protocol: :class:`MemoryCache` (an LRU,
the default, per reranker instance), :class:`SQLiteCache` (a file shared across runs and the
processes of one machine) and :class:`RedisCache` (a Redis server shared by every process that
points at it: replicas of ``serve`` on several machines). All read and write many keys at once
(``get_many`` / ``put_many``: one SQL statement and one transaction, one MGET and one pipeline),
which the reranker uses once per call, off its event loop; for a cache of your own those two
methods are optional (:func:`get_many` / :func:`put_many` fall back to ``get`` / ``put``).

A ``cache=`` setting is a spec that :func:`open_cache` turns into a cache and
:func:`cache_spec` writes back: ``"memory"``, a path to an SQLite file, ``redis://HOST:PORT/DB``
(with ``?ttl=SECONDS`` for entries that expire), or ``None``.

Why one module over 600 lines: the three caches (memory, SQLite, Redis) implement one protocol and
share its keys and spec parsing; a reader compares them side by side.

Example:
    >>> cache = MemoryCache(maxsize=2)
    >>> key = cache_key("https://api.openai.com/v1|gpt-4o-mini", "v1:abc", "q", "p")
    >>> cache.put(key, CachedJudgement({"unlikely": 0.1, "very likely": 0.9}, "logprobs"))
    >>> cache.get(key).probs["very likely"]
    0.9
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from llamaindex_rerankers import _redis
from llamaindex_rerankers.http.loop import run_async, run_sync

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The ``cache=`` settings the reranker understands, for error messages.
SUPPORTED_SPECS = (
    "'memory' (an in-process LRU), a path to an SQLite file (e.g. 'judgements.sqlite' or "
    "'/var/cache/judgements.sqlite'), a Redis URL shared by several processes "
    "('redis://HOST:PORT/DB', optionally '?ttl=SECONDS'), an object with get/put (see "
    "JudgementCache), or None (no cache)"
)

#: ``scheme://`` at the start of a string: a URL, not a file path. Two characters at least, so
#: that a Windows drive (``C:/x``, ``C:\x``) is still a path.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/")


def check_cache_path(path: str | Path) -> str:
    """``path`` as a string, if it names a file; a URL (``postgres://...``, ``sqlite:///...``,
    and ``redis://...``, which is a :class:`RedisCache`, not a file) raises instead of becoming
    a folder named after its scheme.

    Raises:
        ValueError: ``path`` starts with a URL scheme; the message lists the supported specs.

    Example:
        >>> check_cache_path("judgements.sqlite")
        'judgements.sqlite'
        >>> check_cache_path("postgres://db/judgements")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: cache='postgres://db/judgements': the URL scheme 'postgres' is not supported...
    """
    text = str(path)
    found = _URL.match(text) if isinstance(path, str) else None
    if found is not None and _redis.is_redis_spec(text):
        raise ValueError(
            "cache: a redis:// URL names a RedisCache, not a file; pass it as cache= (see "
            "open_cache), not as a path."
        )
    if found is not None:
        raise ValueError(
            f"cache={text!r}: the URL scheme {found.group(1)!r} is not supported. Supported: "
            f"{SUPPORTED_SPECS}. For an SQLite file give its path without a scheme."
        )
    return text


@dataclass(frozen=True)
class CachedJudgement:
    """What is kept per (query, passage): label probabilities and their source.

    Attributes:
        probs: label name → probability (sums to 1); a parsed text answer is ``{label: 1.0}``.
        source: ``"logprobs"`` or ``"text"``.

    Example:
        >>> CachedJudgement({"likely": 1.0}, "text").source
        'text'
    """

    probs: dict[str, float]
    source: str


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(namespace: str, prompt_key: str, query: str, passage: str) -> str:
    """One string key from the judge's namespace, the prompt key and the texts' sha256 digests.

    Example:
        >>> cache_key("u|m", "v1", "q", "p") == cache_key("u|m", "v1", "q", "p")
        True
        >>> cache_key("u|m", "v1", "q", "p") == cache_key("u|m", "v2", "q", "p")
        False
    """
    return json.dumps([namespace, prompt_key, _sha(query), _sha(passage)])


@runtime_checkable
class JudgementCache(Protocol):
    """Anything that can store judgements by key; must be safe to use from several threads."""

    def get(self, key: str) -> CachedJudgement | None:
        """The cached judgement for ``key``, or ``None``."""
        ...

    def put(self, key: str, value: CachedJudgement) -> None:
        """Store ``value`` under ``key``."""
        ...


def get_many(cache: JudgementCache, keys: Sequence[str]) -> dict[str, CachedJudgement]:
    """The cached judgements of ``keys`` (misses left out): the cache's own ``get_many`` when
    it has one, else one ``get`` per key.

    Example:
        >>> c = MemoryCache()
        >>> c.put("a", CachedJudgement({"likely": 1.0}, "text"))
        >>> sorted(get_many(c, ["a", "b"]))
        ['a']
    """
    batch = getattr(cache, "get_many", None)
    if callable(batch):
        return dict(batch(keys))
    found = {}
    for key in keys:
        value = cache.get(key)
        if value is not None:
            found[key] = value
    return found


def put_many(cache: JudgementCache, items: Mapping[str, CachedJudgement]) -> None:
    """Store ``items``: the cache's own ``put_many`` when it has one, else one ``put`` each.

    Example:
        >>> c = MemoryCache()
        >>> put_many(c, {"a": CachedJudgement({"likely": 1.0}, "text")})
        >>> len(c)
        1
    """
    if not items:
        return
    batch = getattr(cache, "put_many", None)
    if callable(batch):
        batch(items.items())
        return
    for key, value in items.items():
        cache.put(key, value)


class MemoryCache:
    """In-memory least-recently-used cache, thread-safe.

    Args:
        maxsize: entries kept; the least recently used one is evicted beyond it.

    Example:
        >>> c = MemoryCache(maxsize=1)
        >>> c.put("a", CachedJudgement({"likely": 1.0}, "text"))
        >>> c.put("b", CachedJudgement({"likely": 1.0}, "text"))
        >>> c.get("a") is None, len(c)
        (True, 1)
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[str, CachedJudgement] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedJudgement | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: CachedJudgement) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedJudgement]:
        """The entries of ``keys`` that are cached, under one lock (misses left out)."""
        found = {}
        with self._lock:
            for key in keys:
                value = self._data.get(key)
                if value is not None:
                    self._data.move_to_end(key)
                    found[key] = value
        return found

    def put_many(self, items: Iterable[tuple[str, CachedJudgement]]) -> None:
        """Store every ``(key, value)`` of ``items``, under one lock."""
        with self._lock:
            for key, value in items:
                self._data[key] = value
                self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"MemoryCache(maxsize={self.maxsize}, entries={len(self._data)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (and deep-copied, when not shared) as its configuration: an empty cache of
        # the same size. The entries are not configuration, and the lock cannot be pickled.
        return (MemoryCache, (self.maxsize,))


class SQLiteCache:
    """Judgements in an SQLite file, kept across runs; thread-safe, one connection.

    Args:
        path: database file; created with its parent folder if missing.

    Example:
        >>> c = SQLiteCache(":memory:")
        >>> c.put("k", CachedJudgement({"likely": 1.0}, "text"))
        >>> c.get("k")
        CachedJudgement(probs={'likely': 1.0}, source='text')
    """

    def __init__(self, path: str | Path) -> None:
        self.path = check_cache_path(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        with self._lock, self._conn:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS judgements "
                "(key TEXT PRIMARY KEY, probs TEXT NOT NULL, source TEXT NOT NULL)"
            )

    def get(self, key: str) -> CachedJudgement | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, value: CachedJudgement) -> None:
        self.put_many([(key, value)])

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedJudgement]:
        """The cached entries of ``keys``: one ``SELECT ... WHERE key IN (...)`` per
        :data:`_MAX_VARIABLES` keys (misses and damaged rows left out)."""
        wanted = list(dict.fromkeys(keys))
        rows: list[tuple[str, str, str]] = []
        with self._lock:
            for start in range(0, len(wanted), _MAX_VARIABLES):
                chunk = wanted[start : start + _MAX_VARIABLES]
                marks = ",".join("?" * len(chunk))
                rows += self._conn.execute(
                    f"SELECT key, probs, source FROM judgements WHERE key IN ({marks})", chunk
                ).fetchall()
        found = {}
        for key, probs, source in rows:
            value = _decode(probs, source)
            if value is not None:
                found[str(key)] = value
        return found

    def put_many(self, items: Iterable[tuple[str, CachedJudgement]]) -> None:
        """Store every ``(key, value)`` of ``items`` in one transaction (one commit)."""
        rows = [(key, json.dumps(value.probs), value.source) for key, value in items]
        if not rows:
            return
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO judgements (key, probs, source) VALUES (?, ?, ?)", rows
            )

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0])

    def __repr__(self) -> str:
        return f"SQLiteCache({self.path!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its path: the loaded copy opens the same file (its own connection).
        return (SQLiteCache, (self.path,))


#: Keys per ``IN (...)``: below SQLite's lowest limit on bound variables (999 before 3.32).
_MAX_VARIABLES = 500


def _decode(probs: str, source: str) -> CachedJudgement | None:
    try:
        decoded = {str(k): float(v) for k, v in json.loads(probs).items()}
    except (ValueError, AttributeError, TypeError):
        return None  # a damaged row is a miss, not a crash
    if not all(math.isfinite(p) for p in decoded.values()):
        return None
    return CachedJudgement(decoded, str(source))


class RedisCache:
    """Judgements in Redis, shared by every process that points at the same server: a
    judgement paid for by one replica is a hit for the others.

    Keys are :func:`cache_key`'s (the same as :class:`SQLiteCache`'s) under ``prefix``; values
    are JSON. A batch is one ``MGET`` or one pipeline of ``SET`` (with ``EX`` when the spec has
    ``?ttl=``), sent by redis' asyncio client on an event loop of the cache's own, so that
    synchronous callers (the reranker reads the cache in a worker thread) and async ones
    (:meth:`aget_many`, :meth:`aput_many`) share one connection pool.

    Redis down or slow is never an error: a read is a miss, a write is skipped, with one
    WARNING when the outage begins and one INFO when it ends; timeouts are short (0.5 s unless
    the spec says ``?timeout=``), and for a second after a failure calls skip Redis at once.

    Args:
        spec: ``redis://HOST[:PORT][/DB][?ttl=SECONDS&timeout=SECONDS]`` (``rediss://`` for
            TLS), without credentials: the password comes from
            ``$LLAMAINDEX_RERANKERS_REDIS_PASSWORD``.
        prefix: the start of every key, to share one database with other data.

    Raises:
        ValueError: the spec is not a valid Redis URL or holds credentials.
        ImportError: the ``redis`` extra is not installed.

    Example:
        >>> cache = RedisCache("redis://127.0.0.1:6379/0?ttl=86400")  # doctest: +SKIP
        >>> LLMReranker(model="m", cache=cache)  # or simply cache="redis://..."  # doctest: +SKIP
    """

    def __init__(self, spec: str, *, prefix: str = "llamaindex-rerankers:judgement:") -> None:
        self.spec = _redis.parse_redis_spec(spec)
        _redis.check_installed()
        self.prefix = prefix
        self._clients = _redis.LoopClients(self.spec)
        self._outage = _redis.Outage("the judgement cache (every passage is judged)", self.spec,
                                     logger)  # fmt: skip

    @property
    def ttl(self) -> float | None:
        """Seconds an entry lives (``None``: until Redis evicts it)."""
        return self.spec.ttl

    @property
    def available(self) -> bool:
        """Whether the last call reached Redis."""
        return not self._outage.down

    def get(self, key: str) -> CachedJudgement | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, value: CachedJudgement) -> None:
        self.put_many([(key, value)])

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedJudgement]:
        """The cached entries of ``keys``, one ``MGET`` (misses, damaged values and every key
        during an outage left out). Blocks: call it off the event loop, or use
        :meth:`aget_many`."""
        wanted = list(dict.fromkeys(keys))
        if not wanted or not self._outage.should_try():
            return {}
        return self._guard(lambda: self._run(self._mget(wanted), self._wait), {})

    def put_many(self, items: Iterable[tuple[str, CachedJudgement]]) -> None:
        """Store every ``(key, value)`` of ``items``, one pipeline (skipped during an outage).
        Blocks: call it off the event loop, or use :meth:`aput_many`."""
        rows = _rows(items)
        if rows and self._outage.should_try():
            self._guard(lambda: self._run(self._set(rows), self._wait), None)

    async def aget_many(self, keys: Iterable[str]) -> dict[str, CachedJudgement]:
        """:meth:`get_many` for async callers, without blocking their loop."""
        wanted = list(dict.fromkeys(keys))
        if not wanted or not self._outage.should_try():
            return {}
        try:
            found = await run_async(self._mget(wanted))
        except _redis.errors() as exc:
            self._outage.failed(exc)
            return {}
        self._outage.succeeded()
        return found

    async def aput_many(self, items: Iterable[tuple[str, CachedJudgement]]) -> None:
        """:meth:`put_many` for async callers, without blocking their loop."""
        rows = _rows(items)
        if not rows or not self._outage.should_try():
            return
        try:
            await run_async(self._set(rows))
        except _redis.errors() as exc:
            self._outage.failed(exc)
            return
        self._outage.succeeded()

    def clear(self) -> None:
        """Delete every key under ``prefix`` (``SCAN`` + ``DEL``; other keys are kept).

        Raises:
            redis.exceptions.RedisError: Redis could not be reached.
        """
        self._run(self._clear(), self._wait * 20)

    def close(self) -> None:
        """Close the connections (a later call opens new ones)."""

        async def close() -> None:
            await self._clients.client().aclose()

        try:
            self._run(close(), self._wait)
        except _redis.errors():
            pass

    @property
    def _wait(self) -> float:
        # A batch is a few commands, each bounded by the socket timeout.
        return 4 * self.spec.timeout

    @staticmethod
    def _run(coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the package's background loop (one loop and one client for
        every thread; a forked child gets a loop of its own), at most ``timeout`` seconds."""
        return run_sync(asyncio.wait_for(coroutine, timeout))

    def _guard(self, call: Any, otherwise: Any) -> Any:
        try:
            result = call()
        except _redis.errors() as exc:
            self._outage.failed(exc)
            return otherwise
        self._outage.succeeded()
        return result

    async def _mget(self, keys: list[str]) -> dict[str, CachedJudgement]:
        client = self._clients.client()
        found = {}
        for start in range(0, len(keys), _MAX_VARIABLES):
            chunk = keys[start : start + _MAX_VARIABLES]
            values = await client.mget([self.prefix + key for key in chunk])
            for key, raw in zip(chunk, values, strict=True):
                value = _decode_redis(raw)
                if value is not None:
                    found[key] = value
        return found

    async def _set(self, rows: list[tuple[str, str]]) -> None:
        ttl = None if self.spec.ttl is None else max(1, math.ceil(self.spec.ttl))
        async with self._clients.client().pipeline(transaction=False) as pipe:
            for key, value in rows:
                pipe.set(self.prefix + key, value, ex=ttl)
            await pipe.execute()

    async def _clear(self) -> None:
        client = self._clients.client()
        batch = []
        async for key in client.scan_iter(match=_glob_escape(self.prefix) + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                await client.delete(*batch)
                batch = []
        if batch:
            await client.delete(*batch)

    def __repr__(self) -> str:
        return f"RedisCache({str(self.spec)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its spec (never a password: that stays in the environment); the loaded
        # copy opens connections of its own to the same server.
        return (_open_redis, (str(self.spec), self.prefix))


def _open_redis(spec: str, prefix: str) -> RedisCache:
    return RedisCache(spec, prefix=prefix)


def _rows(items: Iterable[tuple[str, CachedJudgement]]) -> list[tuple[str, str]]:
    return [
        (key, json.dumps({"probs": value.probs, "source": value.source})) for key, value in items
    ]


def _decode_redis(raw: bytes | str | None) -> CachedJudgement | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return _decode(json.dumps(data["probs"]), str(data["source"]))
    except (ValueError, TypeError, KeyError):
        return None  # a damaged value (or another program's key under our prefix) is a miss


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def check_cache_spec(spec: Any) -> Any:
    """``spec`` unchanged when :func:`open_cache` can open it; raises otherwise, without
    opening anything (no file, no connection).

    Raises:
        ValueError: an unsupported URL, a bad Redis URL, or an object that is not a cache.

    Example:
        >>> check_cache_spec("redis://127.0.0.1:6379/0?ttl=60")
        'redis://127.0.0.1:6379/0?ttl=60'
    """
    if spec is None or spec == "memory":
        return spec
    if _redis.is_redis_spec(spec):
        _redis.parse_redis_spec(spec)
        return spec
    if isinstance(spec, (str, Path)):
        check_cache_path(spec)
        return spec
    if isinstance(spec, JudgementCache):
        return spec
    raise ValueError(f"cache must be {SUPPORTED_SPECS}; got a {type(spec).__name__}.")


def open_cache(spec: Any) -> JudgementCache | None:
    """The cache a ``cache=`` setting names: ``None`` (no cache), ``"memory"`` (a new
    :class:`MemoryCache`), a ``redis://`` URL (a :class:`RedisCache`), a path (an
    :class:`SQLiteCache`, created if missing) or a cache object (returned as is).

    Raises:
        ValueError: the spec is none of these; the message lists what is supported.

    Example:
        >>> open_cache("memory")
        MemoryCache(maxsize=100000, entries=0)
        >>> open_cache(None) is None
        True
    """
    check_cache_spec(spec)
    if spec is None:
        return None
    if isinstance(spec, str) and spec == "memory":
        return MemoryCache()
    if _redis.is_redis_spec(spec):
        return RedisCache(spec)
    if isinstance(spec, (str, Path)):
        return SQLiteCache(spec)
    return spec


def cache_spec(value: Any) -> str | None:
    """What ``to_dict`` writes for a ``cache`` setting: the spec that :func:`open_cache` turns
    into an equivalent cache (a memory cache's entries are not configuration; a Redis URL never
    holds credentials).

    Raises:
        ValueError: ``value`` is a cache object of another kind, which has no spec.

    Example:
        >>> cache_spec(MemoryCache()), cache_spec(None)
        ('memory', None)
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, MemoryCache):
        return "memory"  # a fresh one when loaded: the entries are not configuration
    if isinstance(value, SQLiteCache):
        return value.path
    if isinstance(value, RedisCache):
        return str(value.spec)
    raise ValueError(
        f"LLMReranker.to_dict() cannot write a cache object of type {type(value).__name__}: "
        "use cache='memory', a path to an SQLite file, a redis:// URL, or None; or write the "
        "other settings with to_dict(exclude={'cache'}) and pass it again: "
        "LLMReranker.from_dict(config, cache=your_cache)."
    )
