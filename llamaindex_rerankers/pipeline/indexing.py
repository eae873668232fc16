"""Incremental indexing into Chroma: files or documents in, only new and changed ones embedded.

Indexing is idempotent and incremental, with its state kept in the Chroma collection itself so
that it works the same for an embedded ``PersistentClient`` and a ``chroma run`` server: every
chunk carries ``source_id`` (the file's path relative to the indexed folder, or the document id)
and ``source_hash`` (a fingerprint of the source's content and of the indexing settings) in its
metadata, and chunk ids are stable (``"<source_id>#<chunk number>"``). Re-indexing compares
fingerprints, embeds only new and changed sources and removes the chunks of changed and deleted
ones. Chunks without ``source_id`` (written by other tools) are never touched.

Example:
    >>> from llamaindex_rerankers.pipeline import ChromaConfig, index_folder
    >>> stats = index_folder("docs/", ChromaConfig(persist_dir="./chroma"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from llamaindex_rerankers.base import _union
from llamaindex_rerankers.pipeline.chroma import (
    ChromaConfig,
    _check_collection_model,
    _open_collection,
    _vector_store,
)
from llamaindex_rerankers.pipeline.embeddings import _embed_model_name, make_embed_model

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.schema import BaseNode, Document

logger = logging.getLogger(__name__)

#: Chunk metadata keys that hold the incremental-indexing state.
SOURCE_ID = "source_id"
SOURCE_HASH = "source_hash"

# Chunks are embedded and written in groups of about this many, so an interrupted run keeps the
# sources already written (they count as unchanged next time).
_FLUSH_CHUNKS = 256
# Page size for reading and deleting ids; below every Chroma client's max batch size.
_PAGE = 1000
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class IndexStats:
    """What one indexing run did. File/document counts, except ``chunks`` and ``embedded``.

    Attributes:
        added: sources (files or documents) seen for the first time.
        updated: sources whose content (or the indexing settings) changed; re-embedded.
        removed: sources no longer present; their chunks were deleted.
        unchanged: sources left as they were (nothing embedded).
        chunks: chunks in the collection after the run (all of them).
        embedded: chunks embedded in this run.
        skipped: new or changed sources that produced no text (nothing stored for them).

    Example:
        >>> IndexStats(added=2, updated=0, removed=0, unchanged=5, chunks=9).changed
        True
    """

    added: int
    updated: int
    removed: int
    unchanged: int
    chunks: int
    embedded: int = 0
    skipped: int = 0

    @property
    def changed(self) -> bool:
        """Whether the run changed the collection."""
        return bool(self.added or self.updated or self.removed)


@dataclass
class _Source:
    """One unit of incremental indexing: a file or a document id."""

    key: str
    fingerprint: str
    load: Callable[[], list[Document]]


@dataclass
class _Stored:
    ids: list[str] = field(default_factory=list)
    hashes: set[str] = field(default_factory=set)


def index_folder(
    path: str | Path,
    config: ChromaConfig,
    *,
    embed_model: BaseEmbedding | None = None,
    chunk_size: int = 512,
    chunk_overlap: int = 64,
    show_progress: bool = True,
    required_exts: Sequence[str] | None = None,
    delete_missing: bool = True,
) -> IndexStats:
    """Index (or re-index) a folder into Chroma, embedding only new and changed files.

    Files are read recursively with LlamaIndex's ``SimpleDirectoryReader`` (hidden files
    skipped; ``.md``, ``.txt`` and whatever else it reads). A file is identified by its path
    relative to ``path`` and fingerprinted by its bytes and the indexing settings, so running
    this again on an unchanged folder embeds nothing, an edited file is re-embedded, and a
    deleted file's chunks are removed. The collection mirrors the folder: index one folder per
    collection (or pass ``delete_missing=False``).

    Args:
        path: the folder to index.
        config: where the index lives.
        embed_model: the embedding model; ``None`` uses :func:`make_embed_model`.
        chunk_size: chunk size in tokens (LlamaIndex ``SentenceSplitter``).
        chunk_overlap: overlap between chunks in tokens.
        show_progress: show a tqdm progress bar while embedding.
        required_exts: only index files with these extensions (e.g. ``[".md", ".txt"]``).
        delete_missing: remove the chunks of files that are no longer in the folder.

    Returns:
        What the run did.

    Raises:
        ValueError: ``path`` is not a folder or holds no readable file.

    Example:
        >>> stats = index_folder("docs/", ChromaConfig(persist_dir="./chroma"))  # doctest: +SKIP
        >>> stats.added, stats.chunks  # doctest: +SKIP
        (12, 40)
    """
    _check_chunking(chunk_size, chunk_overlap)
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"index_folder needs a folder; {str(root)!r} is not one.")
    files = _folder_files(root, config, required_exts)
    embed = embed_model if embed_model is not None else make_embed_model()
    settings = _settings_tag(chunk_size, chunk_overlap, embed)
    return _sync(
        [_file_source(root, file, settings) for file in files],
        config,
        embed_model=embed,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        show_progress=show_progress,
        delete_missing=delete_missing,
    )


def _folder_files(
    root: Path, config: ChromaConfig, required_exts: Sequence[str] | None
) -> list[Path]:
    """The files ``SimpleDirectoryReader`` would read under ``root``, minus the index's own."""
    from llama_index.core import SimpleDirectoryReader

    exts = [e if e.startswith(".") else f".{e}" for e in required_exts or []] or None
    try:
        reader = SimpleDirectoryReader(str(root), recursive=True, required_exts=exts)
        files = [Path(f) for f in reader.input_files]
    except ValueError as exc:  # "No files found in ..."
        files = []
        logger.debug("SimpleDirectoryReader: %s", exc)
    if config.persist_dir is not None and not config.host:
        # An embedded Chroma kept inside the folder must not index its own database files.
        db = Path(config.persist_dir).expanduser().resolve()
        files = [f for f in files if not f.resolve().is_relative_to(db)]
    if not files:
        raise ValueError(
            f"No files to index in {str(root)!r}; put .md/.txt files there or check "
            f"required_exts={list(required_exts or [])}."
        )
    return files


def _file_source(root: Path, file: Path, settings: str) -> _Source:
    """One file as a source: keyed by its path under ``root``, fingerprinted by its bytes and
    the indexing settings, read only if it has to be embedded."""
    from llama_index.core import SimpleDirectoryReader

    rel = file.relative_to(root).as_posix()

    def load() -> list[Document]:
        reader = SimpleDirectoryReader(
            input_files=[str(file)], file_metadata=lambda p: _file_metadata(Path(p), rel)
        )
        return list(reader.load_data(show_progress=False))

    digest = _sha256(file.read_bytes())
    return _Source(rel, _sha256(f"{digest}|{settings}".encode()), load)


def index_documents(
    documents: Sequence[Document],
    config: ChromaConfig,
    *,
    embed_model: BaseEmbedding | None = None,
    chunk_size: int = 512,
    chunk_overlap: int = 64,
    show_progress: bool = True,
    delete_missing: bool = True,
) -> IndexStats:
    """Index LlamaIndex documents into Chroma, incrementally, keyed by document id.

    Same logic as :func:`index_folder`: a document is fingerprinted by its text, metadata and the
    indexing settings; unchanged documents are not re-embedded; documents with the same id are
    indexed together as one source. Give documents stable ids (``Document(id_="...")``): random
    ids make every run re-embed everything.

    Args:
        documents: the documents; they are not modified.
        config: where the index lives.
        embed_model: the embedding model; ``None`` uses :func:`make_embed_model`.
        chunk_size: chunk size in tokens (LlamaIndex ``SentenceSplitter``).
        chunk_overlap: overlap between chunks in tokens.
        show_progress: show a tqdm progress bar while embedding.
        delete_missing: remove the chunks of document ids not in ``documents``.

    Returns:
        What the run did.

    Example:
        >>> from llama_index.core import Document
        >>> docs = [Document(id_="guide", text="Prune apple trees in late winter.")]
        >>> index_documents(docs, ChromaConfig(persist_dir="./chroma"))  # doctest: +SKIP
        IndexStats(added=1, updated=0, removed=0, unchanged=0, chunks=1, embedded=1, skipped=0)
    """
    from llama_index.core.schema import Document as LIDocument

    _check_chunking(chunk_size, chunk_overlap)
    groups: dict[str, list[Document]] = {}
    for i, doc in enumerate(documents):
        if not isinstance(doc, LIDocument):
            raise TypeError(
                f"documents[{i}] is a {type(doc).__name__}, not a llama_index Document; wrap "
                "text as Document(id_='...', text='...')."
            )
        groups.setdefault(doc.doc_id, []).append(doc)
    random_ids = sum(bool(_UUID.match(k)) for k in groups)
    if random_ids:
        logger.warning(
            "%d of %d documents have random (uuid) ids; re-indexing them re-embeds them every "
            "time. Pass Document(id_='<stable id>', ...) for incremental indexing.",
            random_ids,
            len(groups),
        )
    embed = embed_model if embed_model is not None else make_embed_model()
    settings = _settings_tag(chunk_size, chunk_overlap, embed)
    sources = []
    for key, docs in groups.items():
        content = json.dumps(
            [[d.text, d.metadata] for d in docs], sort_keys=True, default=str, ensure_ascii=False
        )
        fingerprint = _sha256(f"{_sha256(content.encode())}|{settings}".encode())
        sources.append(_Source(key, fingerprint, _copier(docs)))
    return _sync(
        sources,
        config,
        embed_model=embed,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        show_progress=show_progress,
        delete_missing=delete_missing,
    )


def _copier(docs: Sequence[Document]) -> Callable[[], list[Document]]:
    """A loader that returns copies, so the caller's documents are never modified."""
    return lambda: [d.model_copy() for d in docs]


def _sync(
    sources: Sequence[_Source],
    config: ChromaConfig,
    *,
    embed_model: BaseEmbedding,
    chunk_size: int,
    chunk_overlap: int,
    show_progress: bool,
    delete_missing: bool,
) -> IndexStats:
    """Bring the collection in line with ``sources``; embeds only new and changed ones."""
    _check_chunking(chunk_size, chunk_overlap)
    keys = [s.key for s in sources]
    if len(set(keys)) != len(keys):
        raise ValueError("Source ids must be unique; this is a bug in the caller.")
    embed = embed_model
    collection = _open_collection(config, create=True, embed_model_name=_embed_model_name(embed))
    _check_collection_model(collection, embed)
    stored = _stored_state(collection)

    todo = [s for s in sources if stored.get(s.key, _Stored()).hashes != {s.fingerprint}]
    added = sum(s.key not in stored for s in todo)
    updated = len(todo) - added
    unchanged = len(sources) - len(todo)
    present = set(keys)
    gone = [k for k in stored if k not in present] if delete_missing else []
    logger.info(
        "Indexing into %s: %d new, %d changed, %d unchanged, %d removed sources",
        config.describe(),
        added,
        updated,
        unchanged,
        len(gone),
    )

    for key in gone:
        _delete_ids(collection, stored[key].ids)

    chunked = _chunk_all(todo, chunk_size, chunk_overlap)
    skipped = sum(1 for _, nodes in chunked if not nodes)
    if skipped:
        # A source with no chunks stores nothing, so it shows up as new on every run.
        added -= sum(1 for s, n in chunked if not n and s.key not in stored)
        updated -= sum(1 for s, n in chunked if not n and s.key in stored)
    embedded = _embed_and_store(collection, chunked, stored, embed, show_progress)
    return IndexStats(
        added=added,
        updated=updated,
        removed=len(gone),
        unchanged=unchanged,
        chunks=int(collection.count()),
        embedded=embedded,
        skipped=skipped,
    )


def _chunk_all(
    todo: Sequence[_Source], chunk_size: int, chunk_overlap: int
) -> list[tuple[_Source, list[BaseNode]]]:
    """Each source with its chunks (none: it had no text, and is skipped with a warning).

    Reading and chunking come first (cheap) so the progress bar knows how many chunks to embed.
    """
    chunked: list[tuple[_Source, list[BaseNode]]] = []
    for source in todo:
        nodes = _chunk(source, chunk_size, chunk_overlap)
        if not nodes:
            logger.warning("%s produced no text to index; skipped", source.key)
        chunked.append((source, nodes))
    return chunked


def _embed_and_store(
    collection: Any,
    chunked: Sequence[tuple[_Source, list[BaseNode]]],
    stored: dict[str, _Stored],
    embed: BaseEmbedding,
    show_progress: bool,
) -> int:
    """Embed the chunks and swap them in for their sources' old ones; returns how many."""
    total = sum(len(n) for _, n in chunked)
    _warn_truncation(embed, [n for _, ns in chunked for n in ns])
    store = _vector_store(collection) if total else None
    embedded = 0
    with tqdm(
        total=total, desc="Embedding chunks", unit="chunk", disable=not show_progress or not total
    ) as bar:
        for group in _groups(chunked, _FLUSH_CHUNKS):
            nodes = [n for _, ns in group for n in ns]
            vectors = _embed(embed, nodes, bar)
            for node, vector in zip(nodes, vectors, strict=True):
                node.embedding = vector
            # Embed first, then swap: a failed embedding leaves the old chunks in place.
            for source, _ in group:
                if source.key in stored:
                    _delete_ids(collection, stored[source.key].ids)
            if nodes and store is not None:
                for start in range(0, len(nodes), _PAGE):
                    store.add(nodes[start : start + _PAGE])
            embedded += len(nodes)
    return embedded


def _check_chunking(chunk_size: int, chunk_overlap: int) -> None:
    if chunk_size < 1 or not 0 <= chunk_overlap < chunk_size:
        raise ValueError(
            f"Need chunk_size >= 1 and 0 <= chunk_overlap < chunk_size; got "
            f"chunk_size={chunk_size}, chunk_overlap={chunk_overlap}."
        )


def _stored_state(collection: Any) -> dict[str, _Stored]:
    """source_id -> chunk ids and fingerprints, read from the chunks' metadata."""
    state: dict[str, _Stored] = {}
    offset = 0
    while True:
        got = collection.get(include=["metadatas"], limit=_PAGE, offset=offset)
        ids = list(got["ids"])
        for chunk_id, meta in zip(ids, got["metadatas"] or [], strict=False):
            key = (meta or {}).get(SOURCE_ID)
            if not isinstance(key, str):
                continue  # not written by this module: leave it alone
            entry = state.setdefault(key, _Stored())
            entry.ids.append(chunk_id)
            entry.hashes.add(str((meta or {}).get(SOURCE_HASH)))
        if len(ids) < _PAGE:
            return state
        offset += _PAGE


def _delete_ids(collection: Any, ids: Sequence[str]) -> None:
    for start in range(0, len(ids), _PAGE):
        collection.delete(ids=list(ids[start : start + _PAGE]))


def _chunk(source: _Source, chunk_size: int, chunk_overlap: int) -> list[BaseNode]:
    """Split a source into nodes with stable ids ``<source_id>#<n>`` and the state metadata."""
    from llama_index.core.node_parser import SentenceSplitter

    docs = []
    for doc in source.load():
        extra = {SOURCE_ID: source.key, SOURCE_HASH: source.fingerprint}
        keys = list(extra)
        docs.append(
            doc.model_copy(
                update={
                    # One ref_doc_id per source, so index.delete_ref_doc(source_id) works too.
                    "id_": source.key,
                    "metadata": {**doc.metadata, **extra},
                    "excluded_embed_metadata_keys": _union(doc.excluded_embed_metadata_keys, keys),
                    "excluded_llm_metadata_keys": _union(doc.excluded_llm_metadata_keys, keys),
                }
            )
        )
    counter = itertools.count()
    splitter = SentenceSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        # Called once per chunk, in order, before prev/next links are set: ids stay consistent.
        id_func=lambda _i, _doc: f"{source.key}#{next(counter)}",
    )
    return [n for n in splitter.get_nodes_from_documents(docs) if n.get_content().strip()]


def _groups(
    chunked: Sequence[tuple[_Source, list[BaseNode]]], size: int
) -> Iterator[list[tuple[_Source, list[BaseNode]]]]:
    group: list[tuple[_Source, list[BaseNode]]] = []
    count = 0
    for item in chunked:
        group.append(item)
        count += len(item[1])
        if count >= size:
            yield group
            group, count = [], 0
    if group:
        yield group


def _embed(embed: BaseEmbedding, nodes: Sequence[BaseNode], bar: Any) -> list[list[float]]:
    from llama_index.core.schema import MetadataMode

    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    vectors: list[list[float]] = []
    step = max(1, int(getattr(embed, "embed_batch_size", 32) or 32))
    for start in range(0, len(texts), step):
        batch = texts[start : start + step]
        vectors.extend(embed.get_text_embedding_batch(batch))
        bar.update(len(batch))
    return vectors


def _warn_truncation(embed: BaseEmbedding, nodes: Sequence[BaseNode]) -> None:
    """Log when chunks are longer than the embedding model reads (they get truncated)."""
    if not nodes:
        return
    model = getattr(embed, "_model", None)  # HuggingFaceEmbedding's SentenceTransformer
    limit = getattr(model, "max_seq_length", None)
    tokenizer = getattr(model, "tokenizer", None)
    if not limit or tokenizer is None:
        return
    from llama_index.core.schema import MetadataMode

    try:
        texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        lengths = [len(x) for x in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    except Exception:  # a tokenizer we do not know how to call: no warning, no failure
        logger.debug("could not count embedding tokens", exc_info=True)
        return
    long = sum(n > limit for n in lengths)
    if long:
        logger.warning(
            "%d of %d chunks are longer than the embedding model's %d tokens and are truncated "
            "when embedded; pass a smaller chunk_size.",
            long,
            len(nodes),
            limit,
        )


def _file_metadata(file: Path, rel: str) -> dict[str, Any]:
    from llama_index.core.readers.file.base import default_file_metadata_func

    meta = default_file_metadata_func(str(file))
    # The relative path keeps the index independent of where the folder lives; the access date
    # would change on every read.
    meta["file_path"] = rel
    meta.pop("last_accessed_date", None)
    return meta


def _settings_tag(chunk_size: int, chunk_overlap: int, embed_model: BaseEmbedding) -> str:
    name = _embed_model_name(embed_model)
    return f"chunk_size={chunk_size}|chunk_overlap={chunk_overlap}|embed={name}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
