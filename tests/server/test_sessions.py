"""Chat sessions in Redis (a real ``redis-server``): the bounds of the memory store (messages,
sessions, time), shared by two stores as by two replicas, and outages.

The chat route's 503 for a ``session_id`` while Redis is down, with real ``serve`` processes,
is in test_replicas.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import pytest

from llamaindex_rerankers.server.sessions import (
    RedisSessionStore,
    SessionStore,
    SessionsUnavailable,
    check_session_store,
    open_session_store,
)
from llamaindex_rerankers.server.settings import ServerSettings


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def store_at(url: str, **bounds: Any) -> RedisSessionStore:
    limits = {"max_sessions": 100, "ttl": 60.0, "max_messages": 40, **bounds}
    # A prefix of each test's own in the session's Redis.
    return RedisSessionStore(url, prefix=f"test:{uuid.uuid4().hex}:", **limits)


def test_a_session_written_by_one_store_is_read_by_another(redis_server: Any) -> None:
    a = store_at(redis_server.url, max_messages=3)
    b = RedisSessionStore(
        redis_server.url, prefix=a.prefix, max_sessions=100, ttl=60.0, max_messages=3
    )

    async def scenario() -> None:
        await a.aappend("s1", [user(str(i)) for i in range(5)])
        assert [m["content"] for m in await b.ahistory("s1")] == ["2", "3", "4"]
        await b.aappend("s1", [{"role": "assistant", "content": "answer"}])
        assert [m["content"] for m in await a.ahistory("s1")] == ["3", "4", "answer"]
        assert await a.ahistory("unknown") == []
        assert len(a) == 1

    asyncio.run(scenario())


def test_the_least_recently_used_session_goes_first(redis_server: Any) -> None:
    store = store_at(redis_server.url, max_sessions=2)

    async def scenario() -> None:
        await store.aappend("a", [user("a")])
        await store.aappend("b", [user("b")])
        await asyncio.sleep(0.01)
        await store.ahistory("a")  # a is now the most recently used
        await store.aappend("c", [user("c")])
        assert await store.ahistory("b") == []
        assert await store.ahistory("a") and await store.ahistory("c")
        assert len(store) == 2

    asyncio.run(scenario())


def test_a_session_expires_ttl_seconds_after_its_last_use(redis_server: Any) -> None:
    store = store_at(redis_server.url, ttl=1.0)

    async def scenario() -> None:
        await store.aappend("s", [user("hi")])
        await asyncio.sleep(0.6)
        assert await store.ahistory("s")  # used: lives another second
        await asyncio.sleep(0.6)
        assert await store.ahistory("s")
        await asyncio.sleep(1.3)
        assert await store.ahistory("s") == []

    asyncio.run(scenario())


def test_redis_down_raises_sessions_unavailable_with_one_warning(
    own_redis: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("llamaindex_rerankers._redis.RETRY_INTERVAL", 0.0)
    store = store_at(own_redis.url)

    async def scenario() -> None:
        await store.aappend("s", [user("hi")])
        own_redis.stop()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(SessionsUnavailable):
                await store.ahistory("s")
            assert time.monotonic() - started < 2.0
        with pytest.raises(SessionsUnavailable):
            await store.aappend("s", [user("again")])
        own_redis.start()  # back, empty: the session is gone with the data (no persistence)
        assert await store.ahistory("s") == []
        assert store.available

    with caplog.at_level(logging.INFO, logger="llamaindex_rerankers"):
        asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_specs_settings_and_errors() -> None:
    assert isinstance(
        open_session_store("memory", max_sessions=1, ttl=1.0, max_messages=1), SessionStore
    )
    assert check_session_store("redis://cache:6379/1") == "redis://cache:6379/1"
    for bad, message in [
        ("postgres://db/x", "'memory'.*redis://"),
        ("redis://cache:6379/1?ttl=5", "session_ttl"),
        ("redis://:pw@cache:6379/1", "LLAMAINDEX_RERANKERS_REDIS_PASSWORD"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_session_store(bad)
        with pytest.raises(ValueError, match="SESSION_STORE") as raised:
            ServerSettings.from_env({"LLAMAINDEX_RERANKERS_SERVE_SESSION_STORE": bad})
        assert ":pw@" not in str(raised.value)  # the settings never repeat a password
    settings = ServerSettings.from_env(
        {
            "LLAMAINDEX_RERANKERS_SERVE_SESSION_STORE": "redis://127.0.0.1:6379/2",
            "LLAMAINDEX_RERANKERS_SERVE_LLM_CACHE": "redis://127.0.0.1:6379/3?ttl=3600",
        }
    )
    assert settings.session_store == "redis://127.0.0.1:6379/2"
    assert settings.llm_cache == "redis://127.0.0.1:6379/3?ttl=3600"
    with pytest.raises(ValueError, match="llm_cache"):
        ServerSettings(llm_cache="memcached://127.0.0.1:11211")
