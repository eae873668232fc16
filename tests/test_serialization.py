"""Configuration round trips: every reranker, and the cascade with its nested stages, survives
``to_dict``/``from_dict`` and ``to_json``/``from_json``; unknown arguments raise."""

from __future__ import annotations

import json
from typing import Any

import pytest
from table_reranker import TableReranker

from llamaindex_rerankers import (
    BaseReranker,
    CascadeReranker,
    CrossEncoderReranker,
    LLMReranker,
)


def cascade() -> CascadeReranker:
    return CascadeReranker(
        first=CrossEncoderReranker(model="some/cross-encoder", max_length=64, batch_size=4),
        second=LLMReranker(
            model="m", base_url="http://127.0.0.1:9/v1", api_key="sk-secret", cache=None
        ),
        keep=3,
        stage1_weight=0.25,
        top_n=2,
        min_score=0.1,
    )


def test_cascade_round_trips_with_its_stages_fields() -> None:
    original = cascade()
    data = original.to_dict()
    assert data["class_name"] == "CascadeReranker"
    assert data["first"]["class_name"] == "CrossEncoderReranker"
    assert data["first"]["max_length"] == 64 and data["first"]["batch_size"] == 4
    assert data["second"]["class_name"] == "LLMReranker"
    assert data["second"]["base_url"] == "http://127.0.0.1:9/v1"
    json.dumps(data)  # JSON-safe

    for rebuilt in (
        CascadeReranker.from_dict(data),
        BaseReranker.from_dict(data),
        CascadeReranker.from_json(original.to_json()),
    ):
        assert isinstance(rebuilt, CascadeReranker)
        assert isinstance(rebuilt.first, CrossEncoderReranker)
        assert isinstance(rebuilt.second, LLMReranker)
        assert rebuilt.to_dict() == data


def test_secrets_are_never_serialised() -> None:
    text = cascade().to_json()
    assert "sk-secret" not in text
    assert "api_key" not in json.loads(text)["second"]


def test_from_dict_does_not_mutate_its_input() -> None:
    data = cascade().to_dict()
    snapshot = json.dumps(data, sort_keys=True)
    BaseReranker.from_dict(data)
    assert json.dumps(data, sort_keys=True) == snapshot


def test_class_names_are_fixed_strings_not_python_names() -> None:
    # A stored configuration names the class by a string that survives a rename of the class.
    class Renamed(CrossEncoderReranker):
        pass

    assert Renamed.class_name() == "CrossEncoderReranker"
    assert TableReranker(table={"a": 1.0}).to_dict()["class_name"] == "TableReranker"


def test_an_unknown_class_name_is_an_error_that_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown reranker class_name 'Nope'.*CascadeReranker"):
        BaseReranker.from_dict({"class_name": "Nope"})


def test_a_configuration_of_another_class_is_refused() -> None:
    data = CrossEncoderReranker(model="some/cross-encoder").to_dict()
    with pytest.raises(ValueError, match="is a CrossEncoderReranker, not a LLMReranker"):
        LLMReranker.from_dict(data)


def test_base_from_dict_without_class_name_says_what_is_missing() -> None:
    with pytest.raises(ValueError, match="needs a 'class_name'"):
        BaseReranker.from_dict({"top_n": 3})


@pytest.mark.parametrize(
    ("cls", "kwargs", "suggestion"),
    [
        (LLMReranker, {"top_k": 3, "concurency": 4}, "'concurency' -> 'concurrency'"),
        (CrossEncoderReranker, {"max_lenght": 64}, "'max_lenght' -> 'max_length'"),
        (CascadeReranker, {"kep": 3}, "'kep' -> 'keep'"),
    ],
)
def test_typo_arguments_raise_with_the_valid_names(
    cls: type[BaseReranker], kwargs: dict[str, Any], suggestion: str
) -> None:
    with pytest.raises(ValueError, match="unknown argument") as info:
        if cls is CascadeReranker:
            cls(first=TableReranker(), second=TableReranker(), **kwargs)
        else:
            cls(**kwargs)
    message = str(info.value)
    assert suggestion in message
    assert "valid arguments:" in message and "top_n" in message
