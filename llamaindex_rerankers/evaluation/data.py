"""Loading IR test collections: BEIR-layout datasets and TREC run files.

Only loading lives here; running rerankers and scoring runs are separate steps
(:mod:`llamaindex_rerankers.evaluation.metrics` scores).

A BEIR-layout folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}`` per line),
``queries.jsonl`` (``{"_id", "text"}``) and ``qrels/<split>.tsv`` (a header
``query-id corpus-id score``, then one judgement per line). Labels may be graded (TREC DL uses
0-3). A TREC run file has lines ``qid Q0 docid rank score tag``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llama_index.core.schema import NodeWithScore, TextNode

#: A ranked first-stage run: query id -> [(doc id, score), ...], best first.
Run = dict[str, list[tuple[str, float]]]
#: Relevance judgements: query id -> doc id -> graded label.
Qrels = dict[str, dict[str, int]]


class DatasetError(ValueError):
    """A dataset or run file is missing or malformed; the message says which file and line."""


@dataclass(frozen=True)
class Doc:
    """One corpus document.

    Attributes:
        doc_id: the corpus id (``_id``).
        title: the title, ``""`` when the dataset has none.
        text: the body text.
    """

    doc_id: str
    title: str
    text: str

    @property
    def content(self) -> str:
        """The text a reranker sees: ``title + "\\n" + text``, or just ``text`` without a title.

        Example:
            >>> Doc("d1", "Apples", "Prune in winter.").content
            'Apples\\nPrune in winter.'
        """
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class Dataset:
    """A test collection: corpus, the queries of one split, and their judgements.

    Attributes:
        name: the folder name (``scifact``, ``trec-dl-2019`` ...).
        split: the qrels split loaded (``test``, ``train``, ``dev``).
        corpus: doc id -> :class:`Doc`.
        queries: query id -> text, only the queries judged in ``split``, in file order.
        qrels: query id -> doc id -> label (graded where the dataset is).

    Example:
        >>> ds = load_beir("../shared/data/scifact")  # doctest: +SKIP
        >>> len(ds.corpus), len(ds.queries)  # doctest: +SKIP
        (5183, 300)
    """

    name: str
    split: str
    corpus: dict[str, Doc]
    queries: dict[str, str]
    qrels: Qrels

    def query_ids(self, limit: int | None = None) -> list[str]:
        """The split's query ids in file order, the first ``limit`` of them if given."""
        ids = list(self.queries)
        return ids if limit is None else ids[:limit]


def load_beir(path: str | Path, split: str = "test") -> Dataset:
    """Load a BEIR-layout dataset folder.

    Args:
        path: the folder holding ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``.
        split: which ``qrels/<split>.tsv`` to load; ``queries`` keeps only its queries.

    Returns:
        The :class:`Dataset`.

    Raises:
        DatasetError: a file is missing or malformed, or a judged query has no text.

    Example:
        >>> ds = load_beir("../shared/data/trec-dl-2019")  # doctest: +SKIP
        >>> max(max(labels.values()) for labels in ds.qrels.values())  # doctest: +SKIP
        3
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"Dataset folder {str(root)!r} does not exist; pass the folder that holds "
            "corpus.jsonl, queries.jsonl and qrels/<split>.tsv (BEIR layout)."
        )
    corpus_file = _need_file(root / "corpus.jsonl", "the corpus")
    queries_file = _need_file(root / "queries.jsonl", "the queries")
    qrels_file = root / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise DatasetError(
            f"No qrels for split {split!r}: {str(qrels_file)!r} does not exist. "
            f"Splits found in {str(root / 'qrels')!r}: {have or 'none'}."
        )

    corpus: dict[str, Doc] = {}
    for lineno, rec in _jsonl(corpus_file):
        doc_id = _field(rec, "_id", corpus_file, lineno)
        corpus[doc_id] = Doc(doc_id, str(rec.get("title") or ""), str(rec.get("text") or ""))
    qrels = load_qrels(qrels_file)
    all_queries: dict[str, str] = {}
    for lineno, rec in _jsonl(queries_file):
        all_queries[_field(rec, "_id", queries_file, lineno)] = _field(
            rec, "text", queries_file, lineno
        )
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DatasetError(
            f"{len(missing)} judged queries of {str(qrels_file)!r} have no text in "
            f"{str(queries_file)!r} (e.g. {missing[:3]}); the files do not belong together."
        )
    queries = {q: text for q, text in all_queries.items() if q in qrels}
    return Dataset(name=root.name, split=split, corpus=corpus, queries=queries, qrels=qrels)


def load_qrels(path: str | Path) -> Qrels:
    """Load a BEIR qrels TSV (header ``query-id corpus-id score``) into query -> doc -> label.

    Example:
        >>> qrels = load_qrels("../shared/data/scifact/qrels/test.tsv")  # doctest: +SKIP
    """
    file = _need_file(Path(path).expanduser(), "the qrels")
    qrels: Qrels = {}
    with file.open(newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh, delimiter="\t")
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise DatasetError(
                f"{str(file)!r} must start with the header 'query-id<TAB>corpus-id<TAB>score' "
                f"(BEIR qrels), got {header!r}."
            )
        for lineno, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise DatasetError(
                    f"{file!s}:{lineno}: expected 3 tab-separated fields, got {row!r}."
                )
            try:
                label = int(float(row[2]))
            except ValueError:
                raise DatasetError(
                    f"{file!s}:{lineno}: relevance {row[2]!r} is not a number."
                ) from None
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = label
    return qrels


def load_trec_run(path: str | Path) -> Run:
    """Load a TREC run file (``qid Q0 docid rank score tag``) as ranked lists.

    Each query's list is ordered by the file's rank column (then by file order), best first.

    Raises:
        DatasetError: the file is missing or a line is malformed.

    Example:
        >>> run = load_trec_run("../shared/data/scifact/runs/bm25_top100.trec")  # doctest: +SKIP
        >>> run["1"][0]  # doctest: +SKIP
        ('10608397', 6.5988)
    """
    file = _need_file(Path(path).expanduser(), "the run")
    ranked: dict[str, list[tuple[int, int, str, float]]] = {}
    with file.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise DatasetError(
                    f"{file!s}:{lineno}: expected 6 fields 'qid Q0 docid rank score tag', "
                    f"got {len(parts)}: {line.strip()!r}."
                )
            qid, _q0, docid, rank, score, _tag = parts
            try:
                entry = (int(rank), lineno, docid, float(score))
            except ValueError:
                raise DatasetError(
                    f"{file!s}:{lineno}: rank {rank!r} or score {score!r} is not a number."
                ) from None
            ranked.setdefault(qid, []).append(entry)
    return {qid: [(d, s) for _r, _l, d, s in sorted(rows)] for qid, rows in ranked.items()}


def candidates(
    dataset: Dataset, run: Mapping[str, Sequence[tuple[str, float]]], qid: str, k: int | None = None
) -> list[NodeWithScore]:
    """The first ``k`` run entries of query ``qid`` as LlamaIndex nodes, best first.

    Each node is ``TextNode(id_=docid, text=doc.content)`` with the run's score.
    A query absent from the run has no candidates (``[]``).

    Raises:
        DatasetError: a run document is not in the corpus (run and dataset do not match).

    Example:
        >>> nodes = candidates(ds, run, "1", k=100)  # doctest: +SKIP
        >>> nodes[0].node.node_id, nodes[0].score  # doctest: +SKIP
        ('10608397', 6.5988)
    """
    entries = run.get(qid, [])
    if k is not None:
        entries = entries[:k]
    nodes: list[NodeWithScore] = []
    for docid, score in entries:
        doc = dataset.corpus.get(docid)
        if doc is None:
            raise DatasetError(
                f"Run document {docid!r} (query {qid!r}) is not in the corpus of "
                f"{dataset.name!r}; check that the run file belongs to this dataset."
            )
        nodes.append(NodeWithScore(node=TextNode(id_=docid, text=doc.content), score=score))
    return nodes


def _need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"Missing {what} file: {str(path)!r} does not exist.")
    return path


def _jsonl(path: Path) -> Iterator[tuple[int, Mapping[str, object]]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path!s}:{lineno}: not valid JSON ({exc}).") from None
            if not isinstance(rec, dict):
                raise DatasetError(f"{path!s}:{lineno}: expected a JSON object.")
            yield lineno, rec


def _field(rec: Mapping[str, object], key: str, path: Path, lineno: int) -> str:
    value = rec.get(key)
    if value is None:
        raise DatasetError(f"{path!s}:{lineno}: missing field {key!r}.")
    return str(value)
