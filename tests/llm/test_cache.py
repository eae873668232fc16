"""Judgement caches (single and batch reads and writes), and the reranker's bookkeeping around
them: one read and one write per call, off the event loop, keyed by the judge's namespace (no
server needed).

The reranker is driven here through the ChatClient protocol by a scripted client, the same door
the OpenAI client uses; the real llama.cpp server is exercised in test_local_server.py.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers.llm import LLMReranker, MemoryCache, SQLiteCache
from llamaindex_rerankers.llm.cache import CachedJudgement, cache_key
from llamaindex_rerankers.llm.loop import THREAD_NAME as LOOP_THREAD
from llamaindex_rerankers.llm.types import ChatClientError, ChatResult, GeneratedToken, TokenChoice


def test_cache_key_changes_with_every_component() -> None:
    base = ("u|m", "v1:x", "q", "p")
    keys = {cache_key(*base)}
    for i in range(len(base)):
        changed = list(base)
        changed[i] = changed[i] + "!"
        keys.add(cache_key(*changed))
    assert len(keys) == 1 + len(base)
    assert "q" not in cache_key(*base).split('"')[5:]  # texts are stored as digests only


def test_memory_cache_evicts_least_recently_used() -> None:
    c = MemoryCache(maxsize=2)
    j = CachedJudgement({"likely": 1.0}, "text")
    c.put("a", j)
    c.put("b", j)
    assert c.get("a") == j  # "a" is now the most recent
    c.put("c", j)
    assert c.get("b") is None and c.get("a") == j and c.get("c") == j
    with pytest.raises(ValueError):
        MemoryCache(maxsize=0)


def test_sqlite_cache_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "judgements.sqlite"
    first = SQLiteCache(path)
    value = CachedJudgement({"unlikely": 0.25, "likely": 0.25, "very likely": 0.5}, "logprobs")
    first.put("k", value)
    first.close()
    second = SQLiteCache(path)
    assert second.get("k") == value
    assert second.get("missing") is None
    assert len(second) == 1


def make_cache(kind: str, tmp_path: Path) -> MemoryCache | SQLiteCache:
    return MemoryCache() if kind == "memory" else SQLiteCache(tmp_path / "c.sqlite")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_batch_reads_and_writes_agree_with_single_ones(kind: str, tmp_path: Path) -> None:
    cache = make_cache(kind, tmp_path)
    values = {
        f"k{i}": CachedJudgement({"likely": i / 1200, "unlikely": 1 - i / 1200}, "logprobs")
        for i in range(1200)  # more keys than one SQL statement takes: read in chunks
    }
    cache.put_many(values.items())
    assert len(cache) == 1200
    assert cache.get_many([*values, "missing"]) == values  # misses are left out
    assert cache.get("k7") == values["k7"]
    cache.put("one", values["k1"])
    assert cache.get_many(["one"]) == {"one": values["k1"]}
    assert cache.get_many([]) == {}
    cache.put_many([])


def test_sqlite_put_many_is_one_transaction(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.sqlite")
    statements: list[str] = []
    cache._conn.set_trace_callback(statements.append)
    value = CachedJudgement({"likely": 1.0}, "text")
    cache.put_many((f"k{i}", value) for i in range(50))
    assert sum(s.startswith("COMMIT") for s in statements) == 1
    statements.clear()
    cache.get_many([f"k{i}" for i in range(50)])
    assert len([s for s in statements if s.startswith("SELECT")]) == 1


def test_a_damaged_sqlite_row_is_a_miss(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.sqlite")
    cache.put("good", CachedJudgement({"likely": 1.0}, "text"))
    with cache._conn:
        cache._conn.execute("INSERT INTO judgements VALUES ('bad', 'not json', 'text')")
        cache._conn.execute("INSERT INTO judgements VALUES ('nan', '{\"likely\": NaN}', 'text')")
    assert set(cache.get_many(["good", "bad", "nan"])) == {"good"}
    assert cache.get("bad") is None


def test_reranker_cache_option(tmp_path: Path) -> None:
    assert isinstance(LLMReranker(model="m").judgement_cache, MemoryCache)
    assert LLMReranker(model="m", cache=None).judgement_cache is None
    on_disk = LLMReranker(model="m", cache=str(tmp_path / "c.sqlite"))
    assert isinstance(on_disk.judgement_cache, SQLiteCache)
    shared = MemoryCache()
    assert LLMReranker(model="m", cache=shared).judgement_cache is shared
    with pytest.raises(ValueError, match="cache must be"):
        LLMReranker(model="m", cache=42)


def test_api_key_is_neither_serialised_nor_shown() -> None:
    reranker = LLMReranker(model="m", api_key="sk-secret")
    assert "sk-secret" not in repr(reranker)
    assert "sk-secret" not in str(reranker.to_dict())
    assert "sk-secret" not in reranker.to_json()


# -- the reranker through a scripted ChatClient ---------------------------------------------

#: These tests are about the cache and the accounting, not calibration or fusion
#: (tests/llm/test_calibration.py): score by the judge alone, no content-free judgements.
PLAIN: dict[str, Any] = {"calibration": "none", "retrieval_weight": 0.0}


class ScriptedClient:
    """Answers by the passage text: 'good' → C, 'fair' → B, 'bad' → A, 'junk' → unparseable,
    'fail' → ChatClientError. Records every request."""

    def __init__(
        self, logprobs: bool = True, identity: tuple[str, str] = ("http://scripted/v1", "scripted")
    ) -> None:
        self.logprobs = logprobs
        self.requests: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._identity = identity

    @property
    def identity(self) -> tuple[str, str]:
        return self._identity

    async def achat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        logprobs: bool,
        top_logprobs: int,
        deadline: float | None = None,
    ) -> ChatResult:
        user = messages[-1]["content"]
        passage = user.split("<passage>\n")[1].split("\n</passage>")[0]
        self.requests.append(passage)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if passage.startswith("fail"):
            raise ChatClientError("HTTP 500 five times", status=500, attempts=5)
        code = {"good": "C", "fair": "B", "bad": "A"}.get(passage.split()[0], "Hmm")
        main = 0.7 if code != "Hmm" else 0.9
        top = (TokenChoice(code, math.log(main)), TokenChoice("X" if code == "A" else "A",
                                                              math.log(1 - main)))  # fmt: skip
        tokens = (
            (GeneratedToken(code, math.log(main), top),) if logprobs and self.logprobs else None
        )
        return ChatResult(
            text=code, tokens=tokens, prompt_tokens=10, completion_tokens=1, attempts=1
        )


def nodes_of(*texts: str) -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0) for i, t in enumerate(texts)
    ]


def test_repeated_query_is_served_from_cache_with_zero_calls() -> None:
    client = ScriptedClient()
    reranker = LLMReranker(**PLAIN, model="scripted", client=client)
    nodes = nodes_of("bad one", "good one", "fair one")
    first = reranker.postprocess_nodes(nodes, query_str="q")
    assert [n.node.id_ for n in first] == ["n1", "n2", "n0"]
    assert reranker.last_report is not None
    assert reranker.last_report.llm.to_dict()["calls"] == 3
    second = reranker.postprocess_nodes(nodes, query_str="q")
    counters = reranker.last_report.llm.to_dict()
    assert counters["calls"] == 0 and counters["cache_hits"] == 3
    assert len(client.requests) == 3
    assert [n.score for n in second] == [n.score for n in first]
    assert all(n.node.metadata["rerank_cached"] for n in second)
    # Another query is another key.
    reranker.postprocess_nodes(nodes, query_str="another q")
    assert reranker.last_report.llm.to_dict()["calls"] == 3


def test_failures_and_unparseable_answers_become_unknown_and_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = ScriptedClient(logprobs=False)
    reranker = LLMReranker(**PLAIN, model="scripted", client=client)
    nodes = nodes_of("fail a", "junk b", "good c", "fail d", "bad e")
    with caplog.at_level("WARNING"):
        out = reranker.postprocess_nodes(nodes, query_str="q")
    assert [n.node.id_ for n in out] == ["n2", "n4", "n0", "n1", "n3"]
    meta = {n.node.id_: n.node.metadata for n in out}
    assert meta["n2"]["rerank_source"] == "text" and meta["n2"]["rerank_score"] == 1.0
    for unknown in ("n0", "n1", "n3"):
        assert meta[unknown]["rerank_label"] == "unknown"
        assert meta[unknown]["rerank_score"] is None
    counters = reranker.last_report.llm.to_dict()  # type: ignore[union-attr]
    assert counters["failures"] == 2 and counters["unknown"] == 3
    assert counters["parse_failures"] == 2  # junk: the answer and the stricter retry
    assert counters["retries"] == 8  # 2 failed judgements x (5 attempts - 1)
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
    # Failures are not cached: the next call asks again.
    reranker.postprocess_nodes(nodes, query_str="q")
    assert reranker.last_report.llm.to_dict()["cache_hits"] == 2  # type: ignore[union-attr]


def test_concurrency_limit_is_respected() -> None:
    client = ScriptedClient()
    reranker = LLMReranker(**PLAIN, model="scripted", client=client, concurrency=3, cache=None)
    reranker.postprocess_nodes(nodes_of(*[f"good {i}" for i in range(10)]), query_str="q")
    assert client.max_in_flight == 3
    assert reranker.last_report.llm.to_dict()["max_in_flight"] == 3  # type: ignore[union-attr]


def test_fused_scores_are_recomputed_from_the_cache_without_calls() -> None:
    client = ScriptedClient()
    cache = MemoryCache()
    nodes = nodes_of("fair first", "bad second", "good third")
    LLMReranker(**PLAIN, model="scripted", client=client, cache=cache).postprocess_nodes(
        nodes, query_str="q"
    )
    fused = LLMReranker(
        **{**PLAIN, "retrieval_weight": 0.5}, model="scripted", client=client, cache=cache
    )
    out = fused.postprocess_nodes(nodes, query_str="q")
    assert len(client.requests) == 3
    assert fused.last_report.llm.to_dict()["calls"] == 0  # type: ignore[union-attr]
    assert all(0.0 <= n.score <= 1.0 for n in out)  # type: ignore[operator]
    assert all("rerank_model_score" in n.node.metadata for n in out)


def test_truncation_is_recorded_per_node() -> None:
    client = ScriptedClient()
    reranker = LLMReranker(**PLAIN, model="scripted", client=client, passage_max_tokens=4)
    out = reranker.postprocess_nodes(nodes_of("good " + "word " * 50, "good short"), query_str="q")
    flags = {n.node.id_: n.node.metadata["rerank_truncated"] for n in out}
    assert flags == {"n0": True, "n1": False}
    assert reranker.last_report.llm.to_dict()["truncated"] == 1  # type: ignore[union-attr]
    assert max(len(p) for p in client.requests) <= 16


class RecordingCache:
    """A user's cache with batch methods: records each batch call and the thread it ran on."""

    def __init__(self) -> None:
        self.data: dict[str, CachedJudgement] = {}
        self.batches: list[tuple[str, int, str]] = []

    def get(self, key: str) -> CachedJudgement | None:
        raise AssertionError("the reranker reads in batches")

    def put(self, key: str, value: CachedJudgement) -> None:
        raise AssertionError("the reranker writes in batches")

    def get_many(self, keys: Sequence[str]) -> dict[str, CachedJudgement]:
        self.batches.append(("get", len(keys), threading.current_thread().name))
        return {k: self.data[k] for k in keys if k in self.data}

    def put_many(self, items: Iterable[tuple[str, CachedJudgement]]) -> None:
        items = list(items)
        self.batches.append(("put", len(items), threading.current_thread().name))
        self.data.update(items)


class SingleKeyCache:
    """A user's cache with only get/put (the protocol's required part)."""

    def __init__(self) -> None:
        self.data: dict[str, CachedJudgement] = {}

    def get(self, key: str) -> CachedJudgement | None:
        return self.data.get(key)

    def put(self, key: str, value: CachedJudgement) -> None:
        self.data[key] = value


def test_the_cache_is_read_once_and_written_once_per_call_off_the_loop() -> None:
    cache = RecordingCache()
    reranker = LLMReranker(**PLAIN, model="scripted", client=ScriptedClient(), cache=cache)
    nodes = nodes_of("good a", "bad b", "fair c", "good a")
    reranker.rerank(nodes, "q")
    reranker.rerank(nodes_of("good a", "fair d"), "q")
    # Distinct passages only ("good a" twice is one key); the second call writes only "fair d".
    assert [(op, n) for op, n, _ in cache.batches] == [
        ("get", 3),
        ("put", 3),
        ("get", 2),
        ("put", 1),
    ]
    caller = threading.current_thread().name
    assert all(thread not in (caller, LOOP_THREAD) for _, _, thread in cache.batches)


def test_a_cache_with_only_get_and_put_still_works() -> None:
    cache = SingleKeyCache()
    client = ScriptedClient()
    reranker = LLMReranker(**PLAIN, model="scripted", client=client, cache=cache)
    reranker.rerank(nodes_of("good a", "bad b"), "q")
    _, report = reranker.rerank(nodes_of("good a", "bad b"), "q")
    assert len(cache.data) == 2 and len(client.requests) == 2
    assert report.llm is not None and (report.llm.calls, report.llm.cache_hits) == (0, 2)


def test_a_failing_cache_is_logged_and_judging_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(SingleKeyCache):
        def get(self, key: str) -> CachedJudgement | None:
            raise OSError("disk gone")

        def put(self, key: str, value: CachedJudgement) -> None:
            raise OSError("disk gone")

    reranker = LLMReranker(**PLAIN, model="scripted", client=ScriptedClient(), cache=Broken())
    with caplog.at_level("WARNING", logger="llamaindex_rerankers"):
        nodes, report = reranker.rerank(nodes_of("good a", "bad b"), "q")
    assert [n.node.metadata["rerank_label"] for n in nodes] == ["very likely", "unlikely"]
    assert report.llm is not None and report.llm.calls == 2
    assert len([r for r in caplog.records if "disk gone" in r.getMessage()]) == 2


def test_the_cache_namespace_names_the_judge() -> None:
    shared = MemoryCache()
    here = ScriptedClient(identity=("http://127.0.0.1:1111/v1", "model.gguf"))
    there = ScriptedClient(identity=("http://127.0.0.1:2222/v1", "model.gguf"))
    nodes = nodes_of("good a", "bad b", "fair c")
    first = LLMReranker(**PLAIN, model="model.gguf", client=here, cache=shared)
    assert first.namespace == "http://127.0.0.1:1111/v1|model.gguf"
    first.rerank(nodes, "q")
    # By default another address is another judge: asked again.
    _, report = LLMReranker(**PLAIN, model="model.gguf", client=there, cache=shared).rerank(
        nodes, "q"
    )
    assert report.llm is not None and (report.llm.calls, report.llm.cache_hits) == (3, 0)
    # Named after the model itself, the cache outlives the address.
    named = {"cache": shared, "cache_namespace": "gguf-sha256:abc", "model": "model.gguf"}
    LLMReranker(**PLAIN, client=here, **named).rerank(nodes, "q")
    _, report = LLMReranker(**PLAIN, client=there, **named).rerank(nodes, "q")
    assert report.llm is not None and (report.llm.calls, report.llm.cache_hits) == (0, 3)
    assert len(there.requests) == 3


def test_text_mode_and_logprobs_mode_do_not_share_judgements() -> None:
    # A text-mode judgement is a hard label; a logprobs reranker must not be served it as if it
    # were its own probabilities (nor the other way round).
    shared = MemoryCache()
    nodes = nodes_of("good a", "bad b")
    LLMReranker(**PLAIN, model="scripted", client=ScriptedClient(), cache=shared).rerank(nodes, "q")
    text = LLMReranker(
        **PLAIN, model="scripted", client=ScriptedClient(), cache=shared, use_logprobs=False
    )
    _, report = text.rerank(nodes, "q")
    assert report.llm is not None and (report.llm.calls, report.llm.cache_hits) == (2, 0)
    _, report = text.rerank(nodes, "q")
    assert report.llm is not None and (report.llm.calls, report.llm.cache_hits) == (0, 2)


@pytest.mark.parametrize(
    "spec",
    ["postgres://db/x", "postgresql+psycopg://u@db/x", "sqlite:///judgements.sqlite",
     "file:///tmp/j.sqlite", "s3://bucket/cache", "memcached://127.0.0.1:11211"],
)  # fmt: skip
def test_a_url_as_cache_is_refused_and_creates_nothing(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"'memory'.*path.*None") as raised:
        LLMReranker(model="m", cache=spec)
    assert spec.split(":")[0] in str(raised.value)  # names the scheme it does not support
    assert "redis://HOST:PORT/DB" in str(raised.value)  # and the URL that is supported
    with pytest.raises(ValueError, match="not supported"):
        LLMReranker.from_dict({**LLMReranker(model="m").to_dict(), "cache": spec})
    assert list(tmp_path.iterdir()) == []  # no folder 'redis:' or file made on the way


@pytest.mark.parametrize(
    "spec", ["judgements.sqlite", "sub/dir/j.sqlite", "C:\\cache\\j.sqlite", "C:/cache/j.sqlite"]
)
def test_plain_and_windows_like_paths_are_still_sqlite_files(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    cache = LLMReranker(model="m", cache=spec).judgement_cache
    assert isinstance(cache, SQLiteCache)
    assert Path(cache.path).resolve() == (tmp_path / spec).resolve()
    absolute = LLMReranker(model="m", cache=tmp_path / "abs.sqlite").judgement_cache
    assert isinstance(absolute, SQLiteCache) and (tmp_path / "abs.sqlite").exists()
