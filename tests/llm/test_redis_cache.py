"""The judgement cache in Redis: a real ``redis-server`` (tests/conftest.py starts one per
session, and one per outage test that it stops and starts again).

The reranker is driven by test_cache.py's scripted client (the LLM is not what is tested here;
the real llama.cpp server behind two real ``serve`` replicas is in
tests/server/test_replicas.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import pickle
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from test_cache import PLAIN, ScriptedClient, nodes_of

from llamaindex_rerankers.llm import LLMReranker
from llamaindex_rerankers.llm.cache import (
    CachedJudgement,
    MemoryCache,
    RedisCache,
    cache_key,
    cache_spec,
    open_cache,
)

LIKELY = CachedJudgement({"unlikely": 0.25, "likely": 0.75}, "logprobs")


@pytest.fixture
def prefix() -> str:
    """Keys of this test's own in the session's Redis."""
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
def raw(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def test_single_and_batch_reads_and_writes(redis_server: Any, prefix: str) -> None:
    cache = RedisCache(redis_server.url, prefix=prefix)
    assert cache.get("a") is None
    cache.put("a", LIKELY)
    assert cache.get("a") == LIKELY
    cache.put_many([(f"k{i}", LIKELY) for i in range(1200)])  # more than one MGET chunk
    found = cache.get_many([f"k{i}" for i in range(1200)] + ["missing", "k3"])
    assert len(found) == 1200 and found["k1199"] == LIKELY and "missing" not in found


def test_async_reads_and_writes_share_the_cache(redis_server: Any, prefix: str) -> None:
    cache = RedisCache(redis_server.url, prefix=prefix)

    async def main() -> dict[str, CachedJudgement]:
        await cache.aput_many([("x", LIKELY)])
        return await cache.aget_many(["x", "y"])

    assert asyncio.run(main()) == {"x": LIKELY}
    assert asyncio.run(main()) == {"x": LIKELY}  # another loop: still works
    assert cache.get("x") == LIKELY


def test_keys_are_the_sqlite_keys_under_a_prefix(
    redis_server: Any, prefix: str, raw: redis.Redis
) -> None:
    cache = RedisCache(redis_server.url, prefix=prefix)
    reranker = LLMReranker(**PLAIN, model="scripted", client=ScriptedClient(), cache=cache)
    reranker.rerank(nodes_of("good a"), "q")
    key = cache_key(reranker.namespace, reranker.prompt_key, "q", "good a")
    stored = raw.get(prefix + key)
    assert stored is not None and json.loads(stored)["source"] == "logprobs"


def test_a_second_reranker_on_the_same_redis_makes_no_llm_call(
    redis_server: Any, prefix: str
) -> None:
    nodes = nodes_of("good a", "bad b", "fair c")
    first_client, second_client = ScriptedClient(), ScriptedClient()
    first = LLMReranker(**PLAIN, model="scripted", client=first_client,
                        cache=RedisCache(redis_server.url, prefix=prefix))  # fmt: skip
    ranked, report = first.rerank(nodes, "q")
    assert report.llm is not None and report.llm.calls == 3
    # Another instance with a cache object of its own: as another replica would be.
    second = LLMReranker(**PLAIN, model="scripted", client=second_client,
                         cache=RedisCache(redis_server.url, prefix=prefix))  # fmt: skip
    again, report = second.rerank(nodes, "q")
    assert report.llm is not None and (report.llm.calls, report.llm.cache_hits) == (0, 3)
    assert second_client.requests == []
    assert [n.score for n in again] == [n.score for n in ranked]


def test_the_spec_string_opens_a_redis_cache(redis_server: Any) -> None:
    reranker = LLMReranker(model="m", cache=redis_server.url + "?ttl=3600")
    cache = reranker.judgement_cache
    assert isinstance(cache, RedisCache) and cache.ttl == 3600
    assert reranker.to_dict()["cache"] == redis_server.url + "?ttl=3600"


def test_entries_expire_after_the_ttl(redis_server: Any, prefix: str, raw: redis.Redis) -> None:
    cache = RedisCache(redis_server.url + "?ttl=1", prefix=prefix)
    cache.put("k", LIKELY)
    assert 0 < raw.ttl(prefix + "k") <= 1
    time.sleep(1.2)
    assert cache.get("k") is None
    forever = RedisCache(redis_server.url, prefix=prefix)
    forever.put("k", LIKELY)
    assert raw.ttl(prefix + "k") == -1  # no expiry


def test_a_damaged_value_is_a_miss(redis_server: Any, prefix: str, raw: redis.Redis) -> None:
    cache = RedisCache(redis_server.url, prefix=prefix)
    raw.set(prefix + "bad", b"not json")
    raw.set(prefix + "nan", json.dumps({"probs": {"likely": "NaN"}, "source": "text"}))
    cache.put("good", LIKELY)
    assert cache.get_many(["bad", "nan", "good"]) == {"good": LIKELY}


def test_copies_pickles_and_to_dict_keep_the_spec(redis_server: Any, prefix: str) -> None:
    spec = redis_server.url + "?ttl=60"
    cache = RedisCache(spec, prefix=prefix)
    cache.put("k", LIKELY)
    loaded = pickle.loads(pickle.dumps(cache))
    assert isinstance(loaded, RedisCache) and loaded is not cache
    assert (str(loaded.spec), loaded.prefix, loaded.get("k")) == (spec, prefix, LIKELY)
    reranker = LLMReranker(model="m", cache=cache)
    assert cache_spec(cache) == spec and reranker.to_dict()["cache"] == spec
    assert copy.deepcopy(reranker).judgement_cache is cache  # copies share the live cache
    assert reranker.model_copy().judgement_cache is cache
    again = pickle.loads(pickle.dumps(LLMReranker(model="m", cache=spec)))
    assert isinstance(again.judgement_cache, RedisCache) and again.cache == spec
    assert isinstance(LLMReranker.from_dict(reranker.to_dict()).judgement_cache, RedisCache)


@pytest.mark.parametrize(
    "spec",
    ["redis://:s3cret-pw@127.0.0.1:6379/0", "redis://user:s3cret-pw@127.0.0.1/0",
     "rediss://admin:s3cret-pw@cache.internal:6380/1?ttl=5"],
)  # fmt: skip
def test_a_password_in_the_url_is_refused_without_repeating_it(spec: str) -> None:
    with pytest.raises(ValueError, match="LLAMAINDEX_RERANKERS_REDIS_PASSWORD") as raised:
        RedisCache(spec)
    assert "s3cret-pw" not in str(raised.value)
    # Pydantic's ValidationError quotes the value given, as it does for every field.
    with pytest.raises(ValueError, match="LLAMAINDEX_RERANKERS_REDIS_PASSWORD"):
        LLMReranker(model="m", cache=spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("redis://127.0.0.1:6379/0?ttl=0", "ttl must be a positive number"),
        ("redis://127.0.0.1:6379/0?ttl=soon", "ttl must be a positive number"),
        ("redis://127.0.0.1:6379/0?ttl=5&db=2", "unknown option db"),
        ("redis://127.0.0.1:6379/zero", "database number"),
        ("redis://127.0.0.1:99999/0", "port"),
        ("redis:///0", "no host"),
    ],
)
def test_bad_redis_specs_say_what_to_fix(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLMReranker(model="m", cache=spec)


def test_open_cache_and_cache_spec_round_trip(tmp_path: Any, redis_server: Any) -> None:
    for spec in ("memory", None, str(tmp_path / "j.sqlite"), redis_server.url + "?ttl=9"):
        assert cache_spec(open_cache(spec)) == spec
    assert isinstance(open_cache("memory"), MemoryCache)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "unreachable" in r.getMessage()
    ]


def test_redis_down_is_a_miss_with_one_warning_per_outage(
    own_redis: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("llamaindex_rerankers._redis.RETRY_INTERVAL", 0.0)  # try every call
    client = ScriptedClient()
    reranker = LLMReranker(**PLAIN, model="scripted", client=client, cache=own_redis.url)
    nodes = nodes_of("good a", "bad b")
    reranker.rerank(nodes, "q")
    own_redis.stop()
    with caplog.at_level(logging.INFO, logger="llamaindex_rerankers"):
        for _ in range(3):  # every call judges again, and none fails
            ranked, report = reranker.rerank(nodes, "q")
            assert report.llm is not None and (report.llm.calls, report.llm.cache_hits) == (2, 0)
            assert [n.node.metadata["rerank_label"] for n in ranked] == ["very likely", "unlikely"]
        assert len(_warnings(caplog)) == 1
        assert own_redis.url.removesuffix("/0") in _warnings(caplog)[0]
        own_redis.start()  # back, empty (no persistence): this call judges and writes
        _, report = reranker.rerank(nodes, "q")
        assert report.llm is not None and report.llm.calls == 2
        assert any("answers again" in r.getMessage() for r in caplog.records)
        _, report = reranker.rerank(nodes, "q")
        assert report.llm is not None and (report.llm.calls, report.llm.cache_hits) == (0, 2)
        own_redis.stop()  # a second outage is logged again
        reranker.rerank(nodes, "q")
        assert len(_warnings(caplog)) == 2


def test_a_redis_that_does_not_answer_times_out_quickly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A socket that accepts connections (the kernel's backlog) and never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        cache = RedisCache(f"redis://127.0.0.1:{port}/0?timeout=0.2")
        reranker = LLMReranker(**PLAIN, model="scripted", client=ScriptedClient(), cache=cache)
        with caplog.at_level(logging.WARNING, logger="llamaindex_rerankers"):
            started = time.monotonic()
            _, report = reranker.rerank(nodes_of("good a"), "q")
            elapsed = time.monotonic() - started
            assert cache.get("anything") is None  # within the retry interval: no wait at all
        assert report.llm is not None and report.llm.calls == 1
        assert elapsed < 2.0, elapsed
        assert len(_warnings(caplog)) == 1 and not cache.available
