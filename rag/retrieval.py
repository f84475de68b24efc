"""Question -> ranked Passages: dense (Chroma, cosine) and lexical (BM25) rankings fused by reciprocal rank.

Chunks are ranked; passages are papers (a paper's best chunk decides its place), so k passages are
k different abstracts. The BM25 index is rebuilt from the Chroma collection itself whenever the
collection's fingerprint changes, so the two can never disagree.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from rag.config import Settings
from rag.embedding import Embedder
from rag.index import open_index
from rag.inputs import passages_k, question_text
from rag.errors import IndexError_
from rag.store import META_FINGERPRINT, META_STATE, Store, StoredChunk, paper_abstract
from rag.types import Location, Passage, display_label

logger = logging.getLogger(__name__)


@dataclass
class _LexicalIndex:
    fingerprint: str
    collection_id: str
    chunks: list[StoredChunk]
    position: dict[str, int]
    embeddings: np.ndarray  # (n_chunks, dim), normalised
    paper_rows: dict[str, list[int]]  # paper_id -> rows of its chunks
    bm25: object
    stemmer: object


def _bm25s():
    import bm25s

    # bm25s sets its logger to DEBUG when imported; let it inherit the level the entry point configured.
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def _tokenize(texts: list[str], stemmer) -> object:
    return _bm25s().tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)


def _abstract_of(lexical: _LexicalIndex, paper_id: str) -> str:
    """A paper's whole abstract: stored once, with its first chunk (see rag.store.chunk_metadata)."""
    rows = lexical.paper_rows[paper_id]
    first = min((lexical.chunks[row] for row in rows), key=lambda c: int(c.metadata.get("ordinal", 0)))
    if int(first.metadata.get("ordinal", 0)) != 0:  # pragma: no cover - a paper always keeps its chunk 0
        return " ".join(lexical.chunks[row].text for row in rows)
    return paper_abstract(first.text, first.metadata)


class Retriever:
    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self.embedder = embedder or Embedder(settings.embedding)
        self._store: Store | None = None
        self._lexical: _LexicalIndex | None = None
        self._lock = threading.Lock()

    # -- index --------------------------------------------------------------------------
    def _index(self) -> tuple[Store, _LexicalIndex]:
        """The store and a lexical index consistent with it, rebuilt when the collection changed.

        The collection is looked up afresh on every call, so a re-ingest or a rebuild by another process is seen
        at the next question. While another process is writing (the collection is marked unfinished), the index
        already loaded keeps answering; with none loaded yet, the error says to wait or run `rag ingest`.
        """
        with self._lock:
            store = self._store or Store.for_settings(self.settings)
            self._store = store
            collection_id = self._reopen(store)
            meta = store.metadata
            fingerprint = str(meta.get(META_FINGERPRINT, ""))
            current = self._lexical
            if current is not None and (current.fingerprint, current.collection_id) == (fingerprint, collection_id):
                return store, current
            if meta.get(META_STATE) != "complete" and current is not None:
                logger.info("the index is being written by another process: answering from the one loaded")
                return store, current
            open_index(self.settings, self.embedder)  # refuses a missing, unfinished or incompatible index
            if current is not None:  # changed by another process (or an ingest in this one): read it afresh
                logger.info("the index changed (fingerprint %s -> %s, collection %s -> %s): reloading it",
                            current.fingerprint, fingerprint, current.collection_id, collection_id)
                store.reload()
                collection_id = store.reopen()
            self._lexical = self._build_lexical(store, fingerprint, collection_id)
            return store, self._lexical

    def _reopen(self, store: Store, attempts: int = 10) -> str:
        """The collection's current id; a rebuild's swap (old dropped, new renamed) takes milliseconds: wait it out."""
        for attempt in range(attempts):
            try:
                return store.reopen()
            except IndexError_:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _build_lexical(store: Store, fingerprint: str, collection_id: str) -> _LexicalIndex:
        bm25s = _bm25s()
        started = time.perf_counter()
        chunks = store.all_chunks(with_embeddings=True)
        stemmer = _stemmer()
        bm25 = bm25s.BM25()
        bm25.index(_tokenize([c.metadata.get("embed_text") or c.text for c in chunks], stemmer), show_progress=False)
        embeddings = np.stack([c.embedding for c in chunks]) if chunks else np.zeros((0, 1), np.float32)
        for c in chunks:  # embeddings now live in the matrix only
            object.__setattr__(c, "embedding", None)
        logger.info("lexical index: %d chunks in %.3fs", len(chunks), time.perf_counter() - started)
        paper_rows: dict[str, list[int]] = {}
        for row, c in enumerate(chunks):
            paper_rows.setdefault(c.metadata["paper_id"], []).append(row)
        position = {c.chunk_id: i for i, c in enumerate(chunks)}
        return _LexicalIndex(fingerprint, collection_id, chunks, position, embeddings, paper_rows, bm25, stemmer)

    def fingerprint(self) -> str:
        return self._index()[1].fingerprint

    def abstracts(self) -> list[str]:
        """The whole abstract of every indexed paper, once each."""
        lexical = self._index()[1]
        return [_abstract_of(lexical, paper_id) for paper_id in lexical.paper_rows]

    def invalidate(self) -> None:
        """Forget the open store (call after a re-ingest in the same process)."""
        with self._lock:
            self._store, self._lexical = None, None

    # -- search -------------------------------------------------------------------------
    def _lexical_ranking(self, lexical: _LexicalIndex, query: str, n: int) -> list[tuple[str, float]]:
        n = min(n, len(lexical.chunks))
        tokens = _tokenize([query], lexical.stemmer)
        if n == 0 or not any(len(t) for t in tokens.ids):
            return []
        docs, scores = lexical.bm25.retrieve(tokens, k=n, show_progress=False, n_threads=1)
        return [(lexical.chunks[int(d)].chunk_id, float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]

    @staticmethod
    def _dense_ranking(store: Store, lexical: _LexicalIndex, vector: np.ndarray, n: int) -> list[tuple[str, float]]:
        """Chroma's nearest chunks; while another process is rewriting the store under this one (Chroma then fails
        to find ids it has not loaded), the same cosine ranking from the vectors already in memory."""
        try:
            return store.query(vector, n)
        except Exception as e:  # noqa: BLE001 - chromadb's internal errors have no common base worth naming
            logger.info("dense search fell back to the loaded vectors (%s)", e)
            scores = lexical.embeddings @ vector if len(lexical.chunks) else np.zeros(0)
            order = np.argsort(-scores)[:n]
            return [(lexical.chunks[int(i)].chunk_id, float(scores[int(i)])) for i in order]

    def search(self, query: str, k: int | None = None) -> list[Passage]:
        """The k best papers for the query, best first."""
        cfg = self.settings.retrieval
        query = question_text(query, self.settings.answer.max_question_chars, what="the query")
        k = passages_k(k) or cfg.k
        store, lexical = self._index()
        query_vector = self.embedder.embed([query])[0]
        n = max(cfg.candidates, k * 3)
        dense = self._dense_ranking(store, lexical, query_vector, n)
        lexical_hits = self._lexical_ranking(lexical, query, n)

        fused: dict[str, float] = {}
        for weight, ranking in ((cfg.dense_weight, dense), (cfg.lexical_weight, lexical_hits)):
            for rank, (chunk_id, _) in enumerate(ranking, start=1):
                fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (cfg.rrf_k + rank)
        bm25_by_chunk = dict(lexical_hits)
        similarity = lexical.embeddings @ query_vector if len(lexical.chunks) else np.zeros(0)

        best: dict[str, tuple[float, str]] = {}  # paper_id -> (fused score, best chunk id)
        for chunk_id, score in fused.items():
            if chunk_id not in lexical.position:
                continue  # stale id from a concurrent re-ingest; the next call rebuilds
            paper_id = lexical.chunks[lexical.position[chunk_id]].metadata["paper_id"]
            if paper_id not in best or score > best[paper_id][0]:
                best[paper_id] = (score, chunk_id)
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:k]

        passages = []
        for rank, (paper_id, (score, chunk_id)) in enumerate(ranked, start=1):
            chunk = lexical.chunks[lexical.position[chunk_id]]
            paper_similarity = float(similarity[lexical.paper_rows[paper_id]].max())
            abstract = _abstract_of(lexical, paper_id)
            passages.append(self._passage(rank, score, chunk, abstract, paper_similarity, bm25_by_chunk))
        return passages

    @staticmethod
    def _passage(
        rank: int, score: float, chunk: StoredChunk, abstract: str, similarity: float, bm25: dict[str, float]
    ) -> Passage:
        meta = chunk.metadata
        title = meta.get("title") or None
        return Passage(
            rank=rank,
            score=round(score, 6),
            chunk_id=chunk.chunk_id,
            paper_id=meta["paper_id"],
            title=title,
            label=title or display_label(abstract),
            source=meta["source"],
            line=int(meta["line"]),
            date=meta.get("date") or None,
            locations=[Location(**loc) for loc in json.loads(meta.get("locations") or "[]")],
            text=abstract,
            chunk_text=chunk.text,
            similarity=round(similarity, 6),
            lexical_score=round(bm25.get(chunk.chunk_id, 0.0), 6),
        )
