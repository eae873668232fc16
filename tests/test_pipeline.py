"""The Chroma pipeline on a real embedded Chroma, the real offline embedding model and the real
offline cross-encoder: idempotent and incremental indexing, retrieval + reranking, query and chat
engines carrying the rerank metadata, and the errors that say how to fix bad input."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.response.schema import Response
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine

from llamaindex_rerankers import CrossEncoderReranker, LLMReranker
from llamaindex_rerankers.pipeline import (
    EMBED_MODEL_ENV,
    NO_RELEVANT_CONTEXT,
    RERANK_FAILED_MESSAGE,
    SOURCE_ID,
    ChromaConfig,
    EmbedModelLoadError,
    IndexStats,
    build_query_engine,
    index_documents,
    index_folder,
    load_index,
    make_embed_model,
    rerank_failed,
    retrieve_and_rerank,
)

QUERY = "best practices for pruning apple trees"
GUIDE = "orchard/pruning-guide.md"
CHUNK = 128  # tokens: small enough that the guide spans several chunks

# A small corpus around the classic example: one real pruning guide and its confusers.
CORPUS = {
    GUIDE: (
        "# Pruning apple trees: a practical guide\n\n"
        "Prune apple trees in late winter, while the tree is dormant and before the buds break. "
        "Start by removing dead, diseased and damaged wood, cutting back to healthy tissue. "
        "Next remove branches that cross or rub against each other, and water sprouts that grow "
        "straight up from the main limbs.\n\n"
        "Aim for an open centre or a central-leader shape so that light and air reach every "
        "part of the canopy; good light means better fruit colour and fewer fungal diseases. "
        "Make each cut just outside the branch collar, at a slight angle, and never leave "
        "stubs. Do not remove more than a quarter of the canopy in a single year: hard pruning "
        "makes the tree answer with a flush of vigorous shoots instead of fruit.\n\n"
        "Young trees are pruned to build a strong framework of well-spaced scaffold branches "
        "with wide crotch angles. Mature trees are pruned to renew fruiting spurs, thin crowded "
        "spur systems and keep the height manageable for picking. Summer pruning of the current "
        "season's growth slows an over-vigorous tree and lets light ripen the fruit."
    ),
    "tools/pruning-shears.md": (
        "# Choosing pruning shears\n\nBypass pruning shears make clean cuts on living stems up "
        "to 2 cm thick; anvil shears crush soft tissue and suit dead wood. Keep the blades "
        "sharp and wipe them with alcohol between plants to avoid spreading disease."
    ),
    "finance/apple-stock.txt": (
        "Apple Inc. (AAPL) shares rose 2% on Thursday after the company reported record iPhone "
        "revenue; analysts raised their price targets and praised the services business."
    ),
    "kitchen/apple-pie.md": (
        "# Grandma's apple pie\n\nPeel and slice six tart apples, toss them with sugar, "
        "cinnamon and a little lemon juice, pile them into a butter crust and bake at 190 C "
        "for 50 minutes until the filling bubbles."
    ),
    "orchard/pear-trees.txt": (
        "Pear trees need a sunny, sheltered spot and deep, well-drained soil. Most pears need a "
        "pollination partner that flowers at the same time; water young trees weekly in dry "
        "spells and mulch around the base."
    ),
    "kitchen/cider.md": (
        "# Pressing apple cider\n\nWash and crush ripe apples, press the pulp through a cloth "
        "and chill the juice at once; leave it to ferment with a cider yeast for hard cider."
    ),
}


class CountingEmbedding(BaseEmbedding):
    """The real embedding model, with a record of every text it embedded for indexing."""

    inner: Any = Field(description="The real embedding model.")
    _texts: list[str] = PrivateAttr(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return self._texts

    def _get_text_embedding(self, text: str) -> list[float]:
        self._texts.append(text)
        return list(self.inner.get_text_embedding(text))

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        self._texts.extend(texts)
        return [list(v) for v in self.inner.get_text_embedding_batch(texts)]

    def _get_query_embedding(self, query: str) -> list[float]:
        return list(self.inner.get_query_embedding(query))

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


@pytest.fixture(scope="session")
def embed_model(embed_model_path: str) -> BaseEmbedding:
    return make_embed_model(embed_model_path)


@pytest.fixture(scope="session")
def cross_encoder(ce_model_path: str) -> CrossEncoderReranker:
    reranker = CrossEncoderReranker(model=ce_model_path)
    reranker.load()
    return reranker


@pytest.fixture
def counting(embed_model: BaseEmbedding) -> CountingEmbedding:
    # Same model name as the real model, so fingerprints match runs that use it directly.
    return CountingEmbedding(inner=embed_model, model_name=embed_model.model_name)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for rel, text in CORPUS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def config(tmp_path: Path) -> ChromaConfig:
    return ChromaConfig(persist_dir=tmp_path / "chroma", collection="test_docs")


def stored(config: ChromaConfig, embed_model: BaseEmbedding) -> dict[str, dict[str, Any]]:
    """Chunk id -> {'source': source_id, 'text': document} of everything in the collection."""
    got = load_index(config, embed_model=embed_model).vector_store.client.get()
    return {
        cid: {"source": meta[SOURCE_ID], "text": text}
        for cid, meta, text in zip(got["ids"], got["metadatas"], got["documents"], strict=True)
    }


def index(corpus: Path, config: ChromaConfig, embed: BaseEmbedding, **kw: Any) -> IndexStats:
    kw.setdefault("chunk_size", CHUNK)
    kw.setdefault("chunk_overlap", 16)
    return index_folder(corpus, config, embed_model=embed, show_progress=False, **kw)


def by_source(chunks: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cid, c in sorted(chunks.items()):
        out.setdefault(c["source"], []).append(cid)
    return out


# -- indexing ---------------------------------------------------------------------------------


def test_first_index_stores_every_file_under_stable_ids(
    corpus: Path, config: ChromaConfig, counting: CountingEmbedding
) -> None:
    stats = index(corpus, config, counting)

    chunks = stored(config, counting)
    assert stats.added == len(CORPUS)
    assert (stats.updated, stats.removed, stats.unchanged, stats.skipped) == (0, 0, 0, 0)
    assert stats.chunks == stats.embedded == len(chunks) == len(counting.texts)
    groups = by_source(chunks)
    assert set(groups) == set(CORPUS)
    # Ids are "<relative path>#<n>", numbered from 0 without gaps; the guide spans several.
    for source, ids in groups.items():
        assert sorted(ids, key=lambda i: int(i.split("#")[1])) == [
            f"{source}#{n}" for n in range(len(ids))
        ]
    assert len(groups[GUIDE]) >= 2
    # Chunk text is the file's text (no path or hash metadata stored in the document text).
    assert all(c["text"] in CORPUS[c["source"]] for c in chunks.values())


def test_reindexing_an_unchanged_folder_embeds_nothing(
    corpus: Path, config: ChromaConfig, counting: CountingEmbedding
) -> None:
    first = index(corpus, config, counting)
    before = stored(config, counting)
    n_embedded = len(counting.texts)

    second = index(corpus, config, counting)

    assert second == IndexStats(
        added=0, updated=0, removed=0, unchanged=len(CORPUS), chunks=first.chunks, embedded=0
    )
    assert len(counting.texts) == n_embedded
    assert stored(config, counting) == before


def test_editing_a_file_re_embeds_only_its_chunks(
    corpus: Path, config: ChromaConfig, counting: CountingEmbedding
) -> None:
    index(corpus, config, counting)
    before = by_source(stored(config, counting))
    counting.texts.clear()
    edited = "kitchen/apple-pie.md"
    new_text = "# Apple crumble\n\nTop sliced apples with oats, butter and brown sugar; bake."
    (corpus / edited).write_text(new_text, encoding="utf-8")

    stats = index(corpus, config, counting)

    assert (stats.added, stats.updated, stats.removed, stats.unchanged) == (
        0,
        1,
        0,
        len(CORPUS) - 1,
    )
    after = stored(config, counting)
    assert stats.embedded == len(counting.texts) == len(by_source(after)[edited]) == 1
    assert "Apple crumble" in counting.texts[0]
    assert all(edited in t for t in counting.texts)  # the embedded text carries its path
    assert [c["text"] for c in after.values() if c["source"] == edited] == [new_text]
    assert not any("Grandma" in c["text"] for c in after.values())
    assert {s: ids for s, ids in by_source(after).items() if s != edited} == {
        s: ids for s, ids in before.items() if s != edited
    }
    assert stats.chunks == len(after)


def test_deleting_and_adding_files(
    corpus: Path, config: ChromaConfig, counting: CountingEmbedding
) -> None:
    index(corpus, config, counting)
    counting.texts.clear()
    (corpus / "finance/apple-stock.txt").unlink()
    (corpus / "orchard/new-note.txt").write_text("Thin apple fruitlets in June.", "utf-8")

    stats = index(corpus, config, counting)

    assert (stats.added, stats.updated, stats.removed, stats.unchanged) == (
        1,
        0,
        1,
        len(CORPUS) - 1,
    )
    sources = by_source(stored(config, counting))
    assert "finance/apple-stock.txt" not in sources
    assert sources["orchard/new-note.txt"] == ["orchard/new-note.txt#0"]
    assert counting.texts and all("new-note" in t for t in counting.texts)


def test_delete_missing_false_keeps_chunks_of_files_no_longer_present(
    corpus: Path, config: ChromaConfig, counting: CountingEmbedding
) -> None:
    index(corpus, config, counting)
    (corpus / "finance/apple-stock.txt").unlink()

    stats = index(corpus, config, counting, delete_missing=False)

    assert stats.removed == 0
    assert "finance/apple-stock.txt" in by_source(stored(config, counting))


def test_changing_the_chunking_re_embeds_everything(
    corpus: Path, config: ChromaConfig, counting: CountingEmbedding
) -> None:
    index(corpus, config, counting)

    stats = index(corpus, config, counting, chunk_size=512, chunk_overlap=32)

    assert (stats.added, stats.updated, stats.unchanged) == (0, len(CORPUS), 0)
    groups = by_source(stored(config, counting))
    assert groups[GUIDE] == [f"{GUIDE}#0"]  # one 512-token chunk now; old chunks are gone
    assert stats.chunks == sum(len(v) for v in groups.values()) == len(CORPUS)


def test_files_filter_and_a_chroma_folder_inside_the_corpus(
    corpus: Path, counting: CountingEmbedding
) -> None:
    config = ChromaConfig(persist_dir=corpus / "db", collection="inside")
    md_only = ChromaConfig(persist_dir=corpus / "db", collection="md_only")
    md_files = {rel for rel in CORPUS if rel.endswith(".md")}

    index(corpus, config, counting)
    again = index(corpus, config, counting)
    md = index(corpus, md_only, counting, required_exts=["md"])

    # The database files now in the folder are not picked up as documents.
    assert has_files(corpus / "db")
    assert (again.added, again.unchanged) == (0, len(CORPUS))
    assert md.added == len(md_files)
    assert set(by_source(stored(md_only, counting))) == md_files


def has_files(db: Path) -> bool:
    return any(f.is_file() for f in db.rglob("*"))


def test_index_documents_is_incremental_by_document_id(
    config: ChromaConfig, counting: CountingEmbedding
) -> None:
    docs = [Document(id_=rel, text=text) for rel, text in CORPUS.items()]
    first = index_documents(docs, config, embed_model=counting, show_progress=False)
    counting.texts.clear()
    docs[1] = Document(id_=docs[1].doc_id, text="Loppers cut branches up to 5 cm thick.")

    second = index_documents(docs[:-1], config, embed_model=counting, show_progress=False)

    assert first.added == len(CORPUS)
    assert (second.added, second.updated, second.removed, second.unchanged) == (
        0,
        1,
        1,
        len(CORPUS) - 2,
    )
    assert counting.texts == ["Loppers cut branches up to 5 cm thick."]
    assert docs[0].metadata == {}  # the caller's documents are not modified
    sources = by_source(stored(config, counting))
    assert set(sources) == {d.doc_id for d in docs[:-1]}


def test_documents_with_random_ids_are_flagged(
    config: ChromaConfig, embed_model: BaseEmbedding, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="llamaindex_rerankers.pipeline"):
        index_documents(
            [Document(text="x y z")], config, embed_model=embed_model, show_progress=False
        )
    assert "random (uuid) ids" in caplog.text


def test_chunks_longer_than_the_embedding_model_reads_are_reported(
    tmp_path: Path, embed_model: BaseEmbedding, caplog: pytest.LogCaptureFixture
) -> None:
    long_doc = Document(id_="long", text=" ".join(CORPUS.values()) * 2)  # ~900 words
    config = ChromaConfig(persist_dir=tmp_path / "db")
    with caplog.at_level(logging.WARNING, logger="llamaindex_rerankers.pipeline"):
        index_documents(
            [long_doc],
            config,
            embed_model=embed_model,
            chunk_size=1024,
            chunk_overlap=0,
            show_progress=False,
        )
    assert "longer than the embedding model's 256 tokens" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llamaindex_rerankers.pipeline"):
        index_documents(
            [long_doc],
            config,
            embed_model=embed_model,
            chunk_size=128,
            chunk_overlap=0,
            show_progress=False,
        )
    assert "longer than" not in caplog.text


# -- retrieval, reranking and engines ---------------------------------------------------------


@pytest.fixture
def built_index(corpus: Path, config: ChromaConfig, embed_model: BaseEmbedding) -> Any:
    index(corpus, config, embed_model)
    return load_index(config, embed_model=embed_model)


def test_retrieve_and_rerank_puts_the_pruning_guide_first(
    built_index: Any, cross_encoder: CrossEncoderReranker
) -> None:
    result = retrieve_and_rerank(built_index, QUERY, top_k=8, reranker=cross_encoder)

    assert result.query == QUERY
    assert len(result.retrieved) == len(result.reranked) == 8
    assert result.report is not None and result.report.n_candidates == 8  # this call's own
    assert result.report.cross_encoder is not None and result.report.cross_encoder.pairs >= 1
    assert result.reranked[0].node.metadata[SOURCE_ID] == GUIDE
    scores = [n.score or 0.0 for n in result.reranked]
    assert scores == sorted(scores, reverse=True)
    # Same candidates, reordered; retrieval_rank points back into the first-stage list.
    assert {n.node.node_id for n in result.reranked} == {n.node.node_id for n in result.retrieved}
    for n in result.reranked:
        rank = n.node.metadata["retrieval_rank"]
        assert result.retrieved[rank - 1].node.node_id == n.node.node_id
        assert n.node.metadata["retrieval_score"] == pytest.approx(result.retrieved[rank - 1].score)
    # The stock and pie confusers rank below every chunk of the guide.
    order = [n.node.metadata[SOURCE_ID] for n in result.reranked]
    last_guide = max(i for i, s in enumerate(order) if s == GUIDE)
    assert order.index("finance/apple-stock.txt") > last_guide
    assert order.index("kitchen/apple-pie.md") > last_guide


def test_retrieve_without_reranker_keeps_the_first_stage_order(built_index: Any) -> None:
    result = retrieve_and_rerank(built_index, QUERY, top_k=3)

    assert [n.node.node_id for n in result.reranked] == [n.node.node_id for n in result.retrieved]
    assert len(result.retrieved) == 3
    scores = [n.score or 0.0 for n in result.retrieved]
    assert scores == sorted(scores, reverse=True)
    assert result.reranked is not result.retrieved


def _assert_reranked_sources(source_nodes: Sequence[Any], top_n: int) -> None:
    assert len(source_nodes) == top_n
    assert source_nodes[0].node.metadata[SOURCE_ID] == GUIDE
    for s in source_nodes:
        meta = s.node.metadata
        assert {"rerank_score", "retrieval_rank", "retrieval_score", "rerank_logit"} <= set(meta)
        assert s.score == meta["rerank_score"]


def test_build_query_engine_without_llm_returns_reranked_sources_offline(
    built_index: Any, ce_model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No OpenAI key: falling back to LlamaIndex's default LLM would raise.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    engine = build_query_engine(
        built_index, reranker=CrossEncoderReranker(model=ce_model_path, top_n=2), top_k=8
    )

    response = engine.query(QUERY)

    assert isinstance(engine, RetrieverQueryEngine)
    assert isinstance(response, Response)
    assert not response.response
    _assert_reranked_sources(response.source_nodes, 2)


def test_build_query_engine_with_an_llm_sends_reranked_text_without_rerank_metadata(
    built_index: Any, ce_model_path: str
) -> None:
    engine = build_query_engine(
        built_index,
        reranker=CrossEncoderReranker(model=ce_model_path, top_n=1),
        top_k=8,
        llm=MockLLM(),  # echoes its prompt: a stand-in synthesizer, not the thing under test
    )

    response = engine.query(QUERY)

    assert isinstance(response, Response)
    _assert_reranked_sources(response.source_nodes, 1)
    prompt = str(response.response)
    assert response.source_nodes[0].node.get_content() in prompt
    assert "rerank_score" not in prompt and "retrieval_rank" not in prompt


def test_build_query_engine_rejects_a_text_response_mode_without_llm(built_index: Any) -> None:
    with pytest.raises(ValueError, match="needs an LLM"):
        build_query_engine(built_index, response_mode="compact")


def test_as_query_engine_and_chat_engine_carry_rerank_metadata(
    built_index: Any, ce_model_path: str
) -> None:
    reranker = CrossEncoderReranker(model=ce_model_path, top_n=2)

    qe = built_index.as_query_engine(
        llm=MockLLM(), similarity_top_k=8, node_postprocessors=[reranker]
    )
    response = qe.query(QUERY)
    chat = built_index.as_chat_engine(
        chat_mode="context", llm=MockLLM(), similarity_top_k=8, node_postprocessors=[reranker]
    )
    reply = chat.chat(QUERY)

    _assert_reranked_sources(response.source_nodes, 2)
    _assert_reranked_sources(reply.source_nodes, 2)
    assert "rerank_score" not in str(reply.response)
    assert [s.node.node_id for s in reply.source_nodes] == [
        s.node.node_id for s in response.source_nodes
    ]


# -- errors that say how to fix the problem ---------------------------------------------------


def test_missing_embedding_model_names_the_argument_and_the_env_var(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(EmbedModelLoadError) as by_arg:
        make_embed_model(missing)
    monkeypatch.setenv(EMBED_MODEL_ENV, missing)
    with pytest.raises(EmbedModelLoadError) as by_env:
        index_folder(corpus, ChromaConfig(persist_dir=tmp_path / "db"), show_progress=False)

    for exc in (by_arg.value, by_env.value):
        assert missing in str(exc)
        assert "model=" in str(exc) and EMBED_MODEL_ENV in str(exc)
    assert not (tmp_path / "db").exists()  # failed before touching Chroma


def test_bad_configuration_and_input_are_rejected_with_a_fix(
    tmp_path: Path, corpus: Path, embed_model: BaseEmbedding
) -> None:
    with pytest.raises(ValueError, match="persist_dir="):
        load_index(ChromaConfig(), embed_model=embed_model)
    with pytest.raises(ValueError, match="collection name"):
        ChromaConfig(persist_dir=tmp_path, collection="x")
    with pytest.raises(ValueError, match="port"):
        ChromaConfig(host="127.0.0.1", port=0)
    config = ChromaConfig(persist_dir=tmp_path / "db")
    with pytest.raises(ValueError, match="needs a folder"):
        index_folder(corpus / GUIDE, config, embed_model=embed_model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No files to index"):
        index_folder(tmp_path / "empty", config, embed_model=embed_model)
    with pytest.raises(ValueError, match="chunk_overlap"):
        index_folder(corpus, config, embed_model=embed_model, chunk_size=64, chunk_overlap=64)


def test_loading_a_missing_index_says_how_to_build_it(
    tmp_path: Path, corpus: Path, embed_model: BaseEmbedding
) -> None:
    nowhere = ChromaConfig(persist_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no index at"):
        load_index(nowhere, embed_model=embed_model)
    assert not (tmp_path / "nowhere").exists()
    config = ChromaConfig(persist_dir=tmp_path / "db", collection="built")
    index(corpus, config, embed_model)
    with pytest.raises(ValueError, match="index_folder"):
        load_index(ChromaConfig(persist_dir=tmp_path / "db", collection="other"))

    empty = load_index(nowhere, embed_model=embed_model, create=True)

    assert retrieve_and_rerank(empty, QUERY).retrieved == []
    assert len(retrieve_and_rerank(load_index(config, embed_model=embed_model), QUERY).retrieved)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens here once the socket is closed


def test_unreachable_chroma_server_says_how_to_start_one(embed_model: BaseEmbedding) -> None:
    port = _closed_port()
    with pytest.raises(ConnectionError, match="chroma run"):
        load_index(ChromaConfig(host="127.0.0.1", port=port), embed_model=embed_model)


def test_query_engine_abstains_when_no_source_is_relevant(
    built_index: Any, ce_model_path: str
) -> None:
    engine = build_query_engine(
        built_index,
        reranker=CrossEncoderReranker(model=ce_model_path, top_n=2),
        top_k=8,
        llm=MockLLM(),  # echoes its prompt, so an answer that is not the message means it ran
        abstain_below=0.5,
    )

    off_topic = engine.query("how do I replace the timing belt of a diesel van?")
    on_topic = engine.query(QUERY)

    # Judged and found wanting: a plain abstention, not a reranker failure.
    assert off_topic.response == NO_RELEVANT_CONTEXT
    assert off_topic.metadata == {"abstained": True}
    assert len(off_topic.source_nodes) == 2  # the sources are still shown
    assert all(s.node.metadata["rerank_score"] < 0.5 for s in off_topic.source_nodes)
    assert on_topic.response != NO_RELEVANT_CONTEXT
    assert asyncio.run(engine.aquery("best diesel van timing belt")).response == NO_RELEVANT_CONTEXT
    assert on_topic.source_nodes[0].node.get_content() in str(on_topic.response)
    with pytest.raises(ValueError, match="abstain_below"):
        build_query_engine(built_index, abstain_below=2.0)


def test_query_engine_says_the_reranker_failed_when_the_llm_endpoint_is_down(
    built_index: Any,
) -> None:
    # A real LLM reranker on a port where nothing listens: every judgement fails to connect.
    reranker = LLMReranker(
        base_url=f"http://127.0.0.1:{_closed_port()}/v1",
        model="unreachable",
        top_n=2,
        max_retries=0,
        timeout=1,
        cache=None,
    )
    engine = build_query_engine(
        built_index,
        reranker=reranker,
        top_k=4,
        llm=MockLLM(),  # echoes its prompt, so an answer that is not the message means it ran
        abstain_below=0.5,
    )

    response = engine.query(QUERY)
    aresponse = asyncio.run(engine.aquery(QUERY))

    # An outage is not "nothing relevant in the index": the answer says which it is.
    for r in (response, aresponse):
        assert r.response == RERANK_FAILED_MESSAGE
        assert r.metadata == {"abstained": False, "rerank_failed": True}
        assert len(r.source_nodes) == 2  # the (unjudged) sources are still shown
        assert all(s.node.metadata["rerank_score"] is None for s in r.source_nodes)


def test_rerank_failed_only_when_every_source_was_left_unjudged() -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    def node(**meta: Any) -> NodeWithScore:
        return NodeWithScore(node=TextNode(text="x", metadata=meta))

    assert rerank_failed([node(rerank_score=None), node(rerank_score=None)])
    assert not rerank_failed([node(rerank_score=None), node(rerank_score=0.1)])
    assert not rerank_failed([])  # an empty index: nothing to judge, so nothing failed
    assert not rerank_failed([node(), node()])  # no reranker of ours ran


def test_sources_with_no_text_to_judge_are_not_an_outage() -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    from llamaindex_rerankers import CrossEncoderReranker

    # The base leaves a node without text unjudged on purpose; an answer over image nodes
    # must not say "the reranker failed, retry later".
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.5) for t in ("", "  \n")]
    out = CrossEncoderReranker(model="never-loaded").rerank(nodes, "q").nodes
    assert all(n.node.metadata["rerank_score"] is None for n in out)
    assert not rerank_failed(out)
    assert rerank_failed([NodeWithScore(node=TextNode(text="x", metadata={"rerank_score": None}))])
