"""Cross-encoder backends: precision="auto", tokenize-once, the ONNX export cache, threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers import cross_encoder as ce_module
from llamaindex_rerankers import cross_encoder_backends as backends
from llamaindex_rerankers.cross_encoder import CrossEncoderReranker
from llamaindex_rerankers.cross_encoder_backends import (
    CACHE_ENV,
    cpu_flags,
    resolve_precision,
    torch_threads,
)

pytestmark = pytest.mark.slow

QUERY = "how to prune apple trees in winter"


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh on-disk cache of exported models for this module."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("rerankers-cache")
        mp.setenv(CACHE_ENV, str(path))
        yield path


def _nodes(texts: list[str]) -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=1.0) for i, t in enumerate(texts)
    ]


def _logits(reranker: CrossEncoderReranker, nodes: list[NodeWithScore]) -> dict[str, float]:
    out = reranker.rerank(nodes, QUERY).nodes
    return {n.node.node_id: n.node.metadata["rerank_logit"] for n in out}


# --- precision="auto" ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ({"avx2", "amx_bf16"}, "bfloat16"),
        ({"avx512f", "avx512_bf16"}, "bfloat16"),
        ({"fp", "asimd", "bf16"}, "bfloat16"),  # ARM (Graviton 3, Apple M2+ under Linux)
        ({"avx2", "avx512f", "avx512_vnni"}, "float32"),  # AVX-512 without BF16: emulated
        (set(), "float32"),  # flags unreadable
    ],
)
def test_auto_is_bfloat16_only_with_native_bf16_on_the_cpu(flags: set[str], want: str) -> None:
    assert resolve_precision("auto", "torch", "cpu", flags=frozenset(flags)) == want


def test_auto_is_float32_off_torch_and_explicit_precisions_are_kept() -> None:
    native = frozenset({"amx_bf16"})
    assert resolve_precision("auto", "onnx", "cpu", flags=native) == "float32"
    assert resolve_precision("float32", "torch", "cpu", flags=native) == "float32"
    assert resolve_precision("bfloat16", "torch", "cpu", flags=frozenset()) == "bfloat16"
    assert resolve_precision("auto", "torch", "mps", flags=native) == "float32"


def test_auto_on_cuda_asks_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "torch", "cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "torch", "cuda") == "float32"


def test_cpu_flags_are_read_from_cpuinfo_text() -> None:
    text = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 amx_bf16\n\nflags : other\n"
    assert cpu_flags(text) == frozenset({"fpu", "sse2", "amx_bf16"})
    assert cpu_flags("Features\t: fp asimd bf16\n") == frozenset({"fp", "asimd", "bf16"})
    assert cpu_flags("nothing here") == frozenset()


def test_the_default_is_auto_and_resolves_by_this_machine(ce_model_path: str) -> None:
    r = CrossEncoderReranker(model=ce_model_path)
    assert r.precision == "auto"
    native = bool(cpu_flags() & backends.BF16_CPU_FLAGS)
    assert r.effective_precision == ("bfloat16" if native else "float32")
    assert CrossEncoderReranker(model=ce_model_path, precision="float32").effective_precision == (
        "float32"
    )


def test_auto_keeps_logits_close_to_float32(ce_model_path: str) -> None:
    texts = [
        "Prune apple trees in late winter, before the buds break.",
        "Apple Inc. shares fell 2% after the earnings call.",
        "Winter pruning of fruit trees removes dead and crossing branches.",
    ]
    exact = _logits(CrossEncoderReranker(model=ce_model_path, precision="float32"), _nodes(texts))
    auto = _logits(CrossEncoderReranker(model=ce_model_path), _nodes(texts))
    assert max(abs(auto[k] - exact[k]) for k in exact) < 0.1
    assert max(auto, key=auto.__getitem__) == max(exact, key=exact.__getitem__)


# --- tokenize once -------------------------------------------------------------------------------


class _CountingTokenizer:
    """Delegates to a tokenizer and counts the calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_one_tokenizer_call_per_rerank(ce_model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    r = CrossEncoderReranker(model=ce_model_path, max_length=32, precision="float32")
    encoder = r._load().encoder
    counting = _CountingTokenizer(encoder.tokenizer)
    monkeypatch.setattr(encoder, "tokenizer", counting)
    out = r.rerank(_nodes(["short.", " ".join(["pruning"] * 80), "another short one"]), QUERY)
    assert counting.calls == 1
    assert [n.node.metadata["rerank_truncated"] for n in out.nodes if n.node.node_id == "n1"] == [
        True
    ]


def test_truncation_flags_equal_untruncated_lengths_at_the_boundary(ce_model_path: str) -> None:
    limit = 32
    r = CrossEncoderReranker(model=ce_model_path, max_length=limit, precision="float32")
    tokenizer = r.load().tokenizer

    def pair_length(n: int) -> int:
        return len(tokenizer(QUERY, " ".join(["a"] * n))["input_ids"])

    # Passages of exactly limit - 1, limit and limit + 1 tokens with the query, and far longer.
    fits = max(n for n in range(limit) if pair_length(n) <= limit)
    texts = [" ".join(["a"] * n) for n in (fits - 1, fits, fits + 1)]
    texts += [" ".join(["orchard"] * 200), "Prune in late winter."]
    full = [len(ids) for ids in tokenizer([QUERY] * len(texts), texts)["input_ids"]]
    assert full[:3] == [limit - 1, limit, limit + 1]
    out = {
        n.node.node_id: n.node.metadata["rerank_truncated"]
        for n in r.rerank(_nodes(texts), QUERY).nodes
    }
    assert [out[f"n{i}"] for i in range(len(texts))] == [n > limit for n in full]
    assert r.last_report is not None and r.last_report.cross_encoder.truncated == 2


def test_a_slow_tokenizer_gives_the_same_flags(ce_model_path: str) -> None:
    """Without a fast tokenizer's overflow record the flags come from counted lengths."""
    from transformers import BertTokenizer

    slow = BertTokenizer.from_pretrained(ce_model_path)
    encoder = backends.PairEncoder(slow, 32)
    texts = ["short.", " ".join(["pruning"] * 80)]
    assert encoder.encode(QUERY, texts).truncated == [False, True]
    fast = CrossEncoderReranker(model=ce_model_path, max_length=32, precision="float32")
    assert fast._load().encoder.encode(QUERY, texts).truncated == [False, True]


# --- threads -------------------------------------------------------------------------------------


def test_torch_threads_apply_during_the_call_and_are_restored() -> None:
    import torch

    before = torch.get_num_threads()
    seen: list[int] = []
    with torch_threads(1):
        seen.append(torch.get_num_threads())
    assert seen == [1]
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_threads_reach_torch_during_a_rerank(
    ce_model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    r = CrossEncoderReranker(model=ce_model_path, threads=1, precision="float32")
    runner = r._load().runner
    seen: list[int] = []
    real = runner.logits

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "logits", spy)
    before = torch.get_num_threads()
    r.rerank(_nodes(["Prune in late winter."]), QUERY)
    assert seen == [1]
    assert torch.get_num_threads() == before


def test_threads_reach_onnx_runtime(ce_model_path: str, onnx_cache: Path) -> None:
    r = CrossEncoderReranker(model=ce_model_path, backend="onnx", threads=1)
    runner = r._load().runner
    assert isinstance(runner, backends.OnnxRunner)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    other = CrossEncoderReranker(model=ce_model_path, backend="onnx")
    assert other._load() is not r._load()  # another session, same export file
    assert other._load().runner.path == runner.path  # type: ignore[union-attr]


# --- ONNX export and cache ---------------------------------------------------------------------


def test_onnx_float32_matches_the_exact_torch_path(ce_model_path: str, onnx_cache: Path) -> None:
    texts = ["Prune in late winter.", " ".join(["pruning apple branches"] * 40), "AAPL fell 2%."]
    exact = _logits(CrossEncoderReranker(model=ce_model_path, precision="float32"), _nodes(texts))
    onnx = _logits(CrossEncoderReranker(model=ce_model_path, backend="onnx"), _nodes(texts))
    assert max(abs(onnx[k] - exact[k]) for k in exact) < 1e-4


def test_onnx_int8_scores_and_keeps_the_clear_winner(ce_model_path: str, onnx_cache: Path) -> None:
    texts = [
        "Prune apple trees in late winter, before the buds break.",
        "Apple Inc. shares fell 2% after the earnings call.",
    ]
    r = CrossEncoderReranker(model=ce_model_path, backend="onnx", quantize="int8")
    logits = _logits(r, _nodes(texts))
    assert logits["n0"] > logits["n1"]
    assert r._load().runner.path.name == "model_int8.onnx"  # type: ignore[union-attr]


def test_export_is_cached_on_disk_and_reused(
    ce_model_path: str, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exports: list[Path] = []
    quantizations: list[Path] = []
    real_export, real_quantize = backends._export_fp32, backends._quantize_int8

    def export(model: Any, names: list[str], path: Path) -> None:
        exports.append(path)
        real_export(model, names, path)

    def quantize(fp32: Path, path: Path) -> None:
        quantizations.append(path)
        real_quantize(fp32, path)

    monkeypatch.setattr(backends, "_export_fp32", export)
    monkeypatch.setattr(backends, "_quantize_int8", quantize)
    # A setting no other test uses: a new cache entry, exported now.
    kwargs = {"model_kwargs": {"attn_implementation": "eager"}}
    first = CrossEncoderReranker(model=ce_model_path, backend="onnx", **kwargs)
    path = first._load().runner.path  # type: ignore[union-attr]
    assert len(exports) == 1 and path.exists()
    assert (
        json.loads((path.parent / "export.json").read_text())["settings"]["model_kwargs"]
        == (kwargs["model_kwargs"])
    )
    # A new process would start with an empty model cache: the file on disk is reused.
    monkeypatch.setattr(ce_module, "_MODELS", {})
    again = CrossEncoderReranker(model=ce_model_path, backend="onnx", **kwargs)
    assert again._load().runner.path == path  # type: ignore[union-attr]
    assert len(exports) == 1
    # int8 quantizes the cached float32 export, beside it; no second export.
    int8 = CrossEncoderReranker(model=ce_model_path, backend="onnx", quantize="int8", **kwargs)
    int8_path = int8._load().runner.path  # type: ignore[union-attr]
    assert int8_path.parent == path.parent and int8_path != path
    assert len(exports) == 1 and len(quantizations) == 1
    # Other settings are another entry.
    plain = CrossEncoderReranker(model=ce_model_path, backend="onnx")
    assert plain._load().runner.path.parent != path.parent  # type: ignore[union-attr]


def test_cache_key_follows_settings_versions_and_model_files(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    key = backends.onnx_cache_key(str(model), None, None, {"a": 1})
    assert key == backends.onnx_cache_key(str(model), None, None, {"a": 1})
    assert key != backends.onnx_cache_key(str(model), None, None, {"a": 2})
    assert key != backends.onnx_cache_key(str(model), "v2", None, {"a": 1})
    assert key != backends.onnx_cache_key(str(model), None, "abc123", {"a": 1})
    (model / "config.json").write_text('{"changed": true}')  # the model saved again
    assert key != backends.onnx_cache_key(str(model), None, None, {"a": 1})


def test_a_later_process_loads_the_export_offline_without_exporting(
    ce_model_path: str, onnx_cache: Path
) -> None:
    texts = ["Prune in late winter.", "AAPL fell 2%."]
    want = _logits(CrossEncoderReranker(model=ce_model_path, backend="onnx"), _nodes(texts))
    script = textwrap.dedent(
        f"""
        import json, torch
        def refuse(*a, **k):
            raise AssertionError("exported again")
        torch.onnx.export = refuse  # a cache miss would fail loudly
        from llama_index.core.schema import NodeWithScore, TextNode
        from llamaindex_rerankers.cross_encoder import CrossEncoderReranker
        r = CrossEncoderReranker(model={ce_model_path!r}, backend="onnx")
        nodes = [NodeWithScore(node=TextNode(id_=f"n{{i}}", text=t)) for i, t in
                 enumerate({texts!r})]
        out = r.rerank(nodes, {QUERY!r}).nodes
        print(json.dumps({{n.node.node_id: n.node.metadata["rerank_logit"] for n in out}}))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env[CACHE_ENV] = str(onnx_cache)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == pytest.approx(want, abs=1e-6)
