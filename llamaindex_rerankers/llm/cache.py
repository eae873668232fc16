"""Caches of LLM judgements: a repeated (query, passage) makes no LLM call.

Key: (namespace, prompt key, sha256(query), sha256(passage)), see :func:`cache_key`. The
namespace names the judge: by default ``"base_url|model"``, or a stable name of the model
itself (a local server's ``"gguf-sha256:..."``, which stays the same when the server restarts on
another port). The prompt key holds the prompt version and a hash of the templates, labels and
examples. Value: a :class:`CachedJudgement`, the label probabilities (or the parsed label, as
probability 1) and where they came from. Judgements that failed are never cached.

Two implementations of the :class:`JudgementCache` protocol: :class:`MemoryCache` (an LRU, the
default, per reranker instance) and :class:`SQLiteCache` (a file shared across runs and
processes). Both also read and write many keys at once (``get_many`` / ``put_many``: one SQL
statement, one transaction), which the reranker uses once per call, off its event loop; for a
cache of your own those two methods are optional (:func:`get_many` / :func:`put_many` fall back
to ``get`` / ``put``).

Example:
    >>> cache = MemoryCache(maxsize=2)
    >>> key = cache_key("https://api.openai.com/v1|gpt-4o-mini", "v1:abc", "q", "p")
    >>> cache.put(key, CachedJudgement({"unlikely": 0.1, "very likely": 0.9}, "logprobs"))
    >>> cache.get(key).probs["very likely"]
    0.9
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

#: The ``cache=`` settings the reranker understands, for error messages.
SUPPORTED_SPECS = (
    "'memory' (an in-process LRU), a path to an SQLite file (e.g. 'judgements.sqlite' or "
    "'/var/cache/judgements.sqlite'), an object with get/put (see JudgementCache), or None (no "
    "cache)"
)

#: ``scheme://`` at the start of a string: a URL, not a file path. Two characters at least, so
#: that a Windows drive (``C:/x``, ``C:\x``) is still a path.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/")


def check_cache_path(path: str | Path) -> str:
    """``path`` as a string, if it names a file; a URL (``redis://...``, ``postgres://...``,
    ``sqlite:///...``) raises instead of becoming a folder named after its scheme.

    Raises:
        ValueError: ``path`` starts with a URL scheme; the message lists the supported specs.

    Example:
        >>> check_cache_path("judgements.sqlite")
        'judgements.sqlite'
        >>> check_cache_path("redis://127.0.0.1:6379/0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: cache='redis://127.0.0.1:6379/0': the URL scheme 'redis' is not supported. ...
    """
    text = str(path)
    found = _URL.match(text) if isinstance(path, str) else None
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
