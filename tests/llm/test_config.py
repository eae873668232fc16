"""LLMReranker's configuration round-trips: every setting, the prompts and the cache spec survive
to_dict/from_dict and to_json/from_json; secrets and live objects are never written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate
from llama_index.core.schema import MetadataMode

from llamaindex_rerankers.base import BaseReranker
from llamaindex_rerankers.llm import LLMReranker, MemoryCache, SQLiteCache
from llamaindex_rerankers.llm.cache import CachedJudgement
from llamaindex_rerankers.llm.labels import Label
from llamaindex_rerankers.llm.prompts import JUDGE_KEY, RETRY_KEY, SYSTEM_KEY, FewShotExample

LABELS = (Label("no", "N", 0.0), Label("partly", "P", 0.4), Label("yes", "Y", 1.0))
EXAMPLES = (FewShotExample("tides", "The moon pulls the sea.", "yes"),)
SECRETS = ("api_key", "default_headers")


def configured(tmp_path: Path, **overrides: Any) -> LLMReranker:
    """A reranker with every setting away from its default."""
    settings: dict[str, Any] = {
        "model": "my-model",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key": "sk-secret",
        "default_headers": {"X-Api-Token": "header-secret"},
        "labels": LABELS,
        "examples": EXAMPLES,
        "use_logprobs": False,
        "top_logprobs": 5,
        "max_tokens": 2,
        "text_max_tokens": 12,
        "concurrency": 3,
        "timeout": 7.5,
        "max_retries": 1,
        "backoff_base": 0.1,
        "backoff_max": 3.0,
        "deadline": 9.0,
        "query_max_tokens": 64,
        "passage_max_tokens": 256,
        "cache": str(tmp_path / "judgements.sqlite"),
        "cache_namespace": "gguf-sha256:abc",
        "show_progress": True,
        "top_n": 4,
        "min_score": 0.2,
        "retrieval_weight": 0.3,
        "metadata_mode": MetadataMode.NONE,
    }
    settings.update(overrides)
    reranker = LLMReranker(**settings)
    reranker.update_prompts(
        {
            SYSTEM_KEY: PromptTemplate("Judge relevance. Answer {codes}."),
            JUDGE_KEY: PromptTemplate("Q: {query}\nP: {passage}\n{choices}"),
            RETRY_KEY: PromptTemplate("\nOnly {codes}, please."),
        }
    )
    return reranker


def settings_of(reranker: LLMReranker) -> dict[str, Any]:
    names = set(LLMReranker.model_fields) - {"callback_manager", *SECRETS}
    return {name: getattr(reranker, name) for name in sorted(names)}


def test_every_setting_and_the_prompts_survive_to_dict_and_from_dict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = configured(tmp_path)
    config = original.to_dict()
    assert config["class_name"] == "LLMReranker"
    assert json.loads(json.dumps(config)) == config  # JSON-safe
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    for loaded in (
        LLMReranker.from_dict(config),
        BaseReranker.from_dict(config),
        LLMReranker.from_json(original.to_json()),
    ):
        assert type(loaded) is LLMReranker
        assert settings_of(loaded) == settings_of(original)
        assert loaded.prompt_key == original.prompt_key
        assert loaded.get_prompts()[JUDGE_KEY].template == "Q: {query}\nP: {passage}\n{choices}"
        assert loaded.to_dict() == config
        assert isinstance(loaded.judgement_cache, SQLiteCache)
        assert loaded.judgement_cache.path == str(tmp_path / "judgements.sqlite")
    assert os.listdir(cwd) == []  # nothing created where the process happens to run


def test_secrets_are_never_written() -> None:
    reranker = LLMReranker(
        model="m", api_key="sk-secret", default_headers={"Authorization": "Bearer hdr-secret"}
    )
    for written in (str(reranker.to_dict()), reranker.to_json(), repr(reranker)):
        assert "sk-secret" not in written and "hdr-secret" not in written
    config = reranker.to_dict()
    assert not set(SECRETS) & set(config)
    assert LLMReranker.from_dict(config).api_key is None  # to be given again, e.g. from the env


@pytest.mark.parametrize(
    ("cache", "written"),
    [
        ("memory", "memory"),
        (None, None),
        (MemoryCache(maxsize=10), "memory"),  # a fresh one when loaded: entries are not config
    ],
    ids=["memory-spec", "none", "memory-object"],
)
def test_cache_specs_and_objects_are_written_as_specs(
    cache: Any, written: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = LLMReranker(model="m", cache=cache).to_dict()
    assert config["cache"] == written
    loaded = LLMReranker.from_dict(config)
    assert (loaded.judgement_cache is None) == (written is None)
    if written == "memory":
        assert isinstance(loaded.judgement_cache, MemoryCache)
    assert os.listdir(tmp_path) == []


def test_an_sqlite_cache_is_written_as_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store" / "judgements.sqlite"
    live = SQLiteCache(path)
    live.put("k", CachedJudgement({"yes": 1.0}, "text"))
    for cache in (live, path):
        config = LLMReranker(model="m", cache=cache).to_dict()
        assert config["cache"] == str(path)
        cwd = tmp_path / f"cwd-{type(cache).__name__}"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        loaded = LLMReranker.from_dict(config)
        assert isinstance(loaded.judgement_cache, SQLiteCache)
        assert loaded.judgement_cache.get("k") == CachedJudgement({"yes": 1.0}, "text")
        assert os.listdir(cwd) == []


class UsersCache:
    def __init__(self) -> None:
        self.data: dict[str, CachedJudgement] = {}

    def get(self, key: str) -> CachedJudgement | None:
        return self.data.get(key)

    def put(self, key: str, value: CachedJudgement) -> None:
        self.data[key] = value


def test_a_cache_of_ones_own_is_refused_by_to_dict_with_the_fix() -> None:
    own = UsersCache()
    reranker = LLMReranker(model="m", cache=own, top_n=2)
    with pytest.raises(ValueError, match=r"UsersCache.*exclude=\{'cache'\}.*cache=your_cache"):
        reranker.to_dict()
    with pytest.raises(ValueError, match="UsersCache"):
        reranker.to_json()
    config = reranker.to_dict(exclude={"cache"})
    assert "cache" not in config
    loaded = LLMReranker.from_dict(config, cache=own)
    assert loaded.judgement_cache is own and loaded.top_n == 2


def test_a_client_object_is_refused_by_to_dict_with_the_fix() -> None:
    class Client:
        identity = ("scripted://x", "x")

        async def achat(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("not called")

    client = Client()
    reranker = LLMReranker(client=client, model="x", cache=None)
    with pytest.raises(
        ValueError, match=r"exclude=\{'client'\}.*from_dict\(config, client=\.\.\.\)"
    ):
        reranker.to_dict()
    config = reranker.to_dict(exclude={"client"})
    assert LLMReranker.from_dict(config, client=client).client is client


def test_prompts_are_fields_that_the_prompt_mixin_reads_and_writes() -> None:
    reranker = LLMReranker(model="m")
    before = reranker.prompt_key
    reranker.update_prompts({JUDGE_KEY: PromptTemplate("Q={query} P={passage}")})
    assert reranker.judge_prompt == "Q={query} P={passage}"
    assert reranker.get_prompts()[JUDGE_KEY].template == "Q={query} P={passage}"
    assert reranker.prompt_key != before
    assert LLMReranker(model="m", judge_prompt="Q={query} P={passage}").prompt_key == (
        reranker.prompt_key
    )
    with pytest.raises(ValueError, match=r"\{passage\}"):
        LLMReranker(model="m", judge_prompt="Is it about {query}?")
    with pytest.raises(ValueError, match="string template"):
        reranker.update_prompts({SYSTEM_KEY: ChatPromptTemplate.from_messages([("user", "x")])})
    assert reranker.judge_prompt == "Q={query} P={passage}"  # a refused update changes nothing
