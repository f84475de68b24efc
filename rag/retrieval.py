"""Question -> ranked Passages: dense (Chroma, cosine) and lexical (BM25) rankings fused by reciprocal rank.

Chunks are ranked; passages are papers (a paper's best chunk decides its place), so k passages are k different
abstracts. Nothing is loaded whole: the dense ranking is Chroma's nearest-neighbour query, the BM25 index is the
memory-mapped one saved beside the index for the collection's fingerprint (rag.lexical), and only the chunks and
abstracts of the k papers returned are read from the store. The collection is looked up afresh at every search,
so a re-ingest or rebuild by another process is seen at the next question.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from rag.config import Settings
from rag.embedding import Embedder
from rag.errors import IndexError_
from rag.index import open_index
from rag.inputs import passages_k, question_text
from rag.lexical import LEXICAL_DIR, LexicalIndex, index_text, paper_of
from rag.store import META_FINGERPRINT, META_PAPERS, META_STATE, Store, StoredChunk, collection_gone, paper_abstract
from rag.question import analyse
from rag.text import name_pattern
from rag.types import Location, Passage, display_label

logger = logging.getLogger(__name__)
T = TypeVar("T")


def lexical_index_for(store: Store, fingerprint: str, settings: Settings) -> LexicalIndex:
    """The saved BM25 index for this fingerprint, or one built from the store page by page (and saved)."""
    root = settings.data_dir / LEXICAL_DIR
    loaded = LexicalIndex.load(root, fingerprint)
    if loaded is not None:
        logger.info("lexical index: %d chunks loaded from %s", len(loaded), root / fingerprint)
        return loaded
    pairs = ((c.chunk_id, index_text(c.metadata.get("title") or None, c.text)) for c in store.iter_chunks())
    built = LexicalIndex.build(pairs, fingerprint)
    built.save(root)
    return built


class Retriever:
    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self.embedder = embedder or Embedder.for_settings(settings)
        self._store: Store | None = None
        self._lexical: LexicalIndex | None = None
        self._collection_id = ""
        self._lock = threading.Lock()

    # -- index --------------------------------------------------------------------------

    def _index(self) -> tuple[Store, LexicalIndex]:
        """The store and the lexical index of its current content, reloaded when the collection changed.

        While another process is writing (the collection is marked unfinished), the index already loaded keeps
        answering; with none loaded yet, the error says to wait or run `rag ingest`.
        """
        with self._lock:
            store = self._store or Store.for_settings(self.settings)
            self._store = store
            collection_id = self._reopen(store)
            meta = store.metadata
            fingerprint = str(meta.get(META_FINGERPRINT, ""))
            current = self._lexical
            unchanged = current is not None and (current.fingerprint, self._collection_id) == (fingerprint, collection_id)
            if unchanged:
                return store, current
            if meta.get(META_STATE) != "complete" and current is not None:
                logger.info("the index is being written by another process: answering from the one loaded")
                return store, current
            open_index(self.settings, self.embedder)  # refuses a missing, unfinished or incompatible index
            if current is not None:  # changed by another process (or an ingest in this one): read it afresh
                logger.info("the index changed (fingerprint %s -> %s, collection %s -> %s): reloading it",
                            current.fingerprint, fingerprint, self._collection_id, collection_id)
                store.reload()
                collection_id = store.reopen()
            self._lexical = lexical_index_for(store, fingerprint, self.settings)
            self._collection_id = collection_id
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

    def fingerprint(self) -> str:
        return self._reading(lambda: self._index()[1].fingerprint)

    def paper_count(self) -> int:
        return self._reading(lambda: int(self._index()[0].metadata.get(META_PAPERS, 0)))

    def abstracts(self) -> list[str]:
        """The whole abstract of every indexed paper, once each (read page by page from the store)."""
        store, _ = self._index()
        return [paper_abstract(c.text, c.metadata) for c in store.iter_chunks() if int(c.metadata.get("ordinal", 0)) == 0]

    def papers_mentioning(self, name: str, max_papers: int) -> list[str]:
        """The papers whose text mentions a name (see rag.text.name_pattern); more than max_papers means "many"."""

        def read() -> list[str]:
            store, _ = self._index()
            return store.papers_matching(name_pattern(name), max_chunks=4 * max_papers)[:max_papers]

        return self._reading(read)

    def paper_passages(self, paper_ids: Sequence[str], vector: np.ndarray, first_rank: int) -> list[Passage]:
        """Passages (each paper's first chunk, its similarity to the query's `vector`) for papers the search did not
        rank: a list answer reaches every paper that mentions what the question names."""
        return self._reading(lambda: self._paper_passages(paper_ids, vector, first_rank))

    def _paper_passages(self, paper_ids: Sequence[str], vector: np.ndarray, first_rank: int) -> list[Passage]:
        store, _ = self._index()
        stored = store.get([f"{paper_id}:0" for paper_id in paper_ids])
        passages: list[Passage] = []
        for paper_id in paper_ids:
            first = stored.get(f"{paper_id}:0")
            if first is not None:
                similarity = self._paper_similarity(store, paper_id, vector)
                abstract = paper_abstract(first.text, first.metadata)
                passages.append(self._passage(first_rank + len(passages), 0.0, first, abstract, similarity, {}))
        return passages

    def invalidate(self) -> None:
        """Forget the open store (call after a re-ingest in the same process)."""
        with self._lock:
            self._store, self._lexical, self._collection_id = None, None, ""

    # -- search -------------------------------------------------------------------------

    @staticmethod
    def _dense_ranking(store: Store, vector: np.ndarray, n: int) -> list[tuple[str, float]]:
        """Chroma's nearest chunks; empty (lexical ranking only) while another process rewrites an embedded store
        under this one (Chroma then fails to find ids it has not loaded)."""
        try:
            return store.query(vector, n)
        except IndexError_:
            raise
        except Exception as e:  # noqa: BLE001 - chromadb's internal errors have no common base worth naming
            if collection_gone(e):
                raise  # swapped by a rebuild: the whole read is done again (see _reading)
            logger.warning("dense search failed (%s): ranking by BM25 alone for this question", e)
            return []

    def _reading(self, read: Callable[[], T], attempts: int = 20) -> T:
        """Run a read of the index; when a rebuild's swap (old collection dropped, new one renamed) lands between
        opening the collection and reading it, the read is done again on the new one."""
        for attempt in range(attempts):
            try:
                return read()
            except Exception as e:
                if not collection_gone(e) or attempt == attempts - 1:
                    raise
                logger.info("the collection was swapped by a rebuild during a read: reading the new one")
                time.sleep(0.1)
        raise AssertionError("unreachable")  # pragma: no cover

    def search(
        self,
        query: str,
        k: int | None = None,
        max_chars: int | None = None,
        vector: np.ndarray | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Passage]:
        """The k best papers for the query, best first (a query longer than max_chars, by default the settings'
        question limit, is refused). `vector` replaces the query's embedding in the dense search (experiments).
        `names` are the query's names that a paper holding them is ranked first for (see _naming_chunks): the
        assistant passes its analysis's; by default they are read from the query."""
        cfg = self.settings.retrieval
        query = question_text(query, max_chars or self.settings.answer.max_question_chars, what="the query")
        k = passages_k(k) or cfg.k
        query_vector = self.embedder.embed([query])[0] if vector is None else np.asarray(vector, dtype=np.float32)
        names = analyse(query).required_names if names is None else names
        return self._reading(lambda: self._search(query, k, query_vector, names))

    def _search(self, query: str, k: int, query_vector: np.ndarray, names: Sequence[str]) -> list[Passage]:
        cfg = self.settings.retrieval
        store, lexical = self._index()
        n = max(cfg.candidates, k * 3)
        dense = self._dense_ranking(store, query_vector, n)
        lexical_hits = lexical.search(query, n)

        fused: dict[str, float] = {}
        for weight, ranking in ((cfg.dense_weight, dense), (cfg.lexical_weight, lexical_hits)):
            for rank, (chunk_id, _) in enumerate(ranking, start=1):
                fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (cfg.rrf_k + rank)
        named = self._naming_chunks(names, store, lexical)
        for chunk_id in named:
            fused.setdefault(chunk_id, 0.0)
        best: dict[str, tuple[float, str]] = {}  # paper_id -> (fused score, best chunk id)
        for chunk_id, score in fused.items():
            paper_id = paper_of(chunk_id)
            if paper_id not in best or score > best[paper_id][0]:
                best[paper_id] = (score, chunk_id)
        # A paper that holds a rare name of the question comes first: fusion alone can bury it ("What accuracy does
        # LangBridge reach on MGSM?": first for BM25, far down for the embedder, behind papers near in both).
        anchored = {paper_of(chunk_id) for chunk_id in named}
        ranked = sorted(best.items(), key=lambda item: (item[0] not in anchored, -item[1][0], item[0]))

        # A paper's similarity is its best chunk's; a chunk in Chroma's top n outranks every chunk not in it, so for
        # a paper with a chunk there the best is there too. Papers found by BM25 alone are measured on their chunks.
        similarity: dict[str, float] = {}
        for chunk_id, sim in dense:
            similarity[paper_of(chunk_id)] = max(similarity.get(paper_of(chunk_id), -1.0), sim)
        wanted = ranked[: k + 5]  # a few spare papers in case a concurrent re-ingest removed some
        stored = store.get([chunk_id for _, (_, chunk_id) in wanted] + [f"{paper_id}:0" for paper_id, _ in wanted])
        bm25_by_chunk = dict(lexical_hits)
        passages: list[Passage] = []
        for paper_id, (score, chunk_id) in ranked:
            if len(passages) == k:
                break
            chunk, first = stored.get(chunk_id), stored.get(f"{paper_id}:0")
            if chunk is None or first is None:
                continue  # removed by a concurrent re-ingest; the next search sees the new index
            if paper_id not in similarity:
                similarity[paper_id] = self._paper_similarity(store, paper_id, query_vector)
            abstract = paper_abstract(first.text, first.metadata)
            passages.append(self._passage(len(passages) + 1, score, chunk, abstract, similarity[paper_id], bm25_by_chunk))
        return passages

    def _naming_chunks(self, names: Sequence[str], store: Store, lexical: LexicalIndex) -> list[str]:
        """The chunks of the papers that hold every rare one of the query's names (LangBridge, NV-Embed: a digit or
        an inner capital; not one given as an example, "tasks like NER": QuestionAnalysis.required_names) that at most
        RAG_RETRIEVAL__NAME_ANCHOR_PAPERS papers mention, found through each name's rarest indexed term. A common
        name, or one the corpus never uses, sets nothing apart and is skipped; when no paper holds every rare name
        (MMLU and Komodo-7B in different papers), none is anchored, so the answerability check still sees that."""
        most = self.settings.retrieval.name_anchor_papers
        if not most:
            return []
        by_paper: dict[str, list[str]] = {}
        wanted: set[str] | None = None
        for name in dict.fromkeys(names):
            holding = lexical.rare_term_chunks(name, max_chunks=4 * most)
            if not holding:
                continue
            pattern = re.compile(name_pattern(name))
            chunks = store.get(holding)
            naming = [c for c in holding if c in chunks and pattern.search(
                index_text(chunks[c].metadata.get("title") or None, chunks[c].text))]
            papers = {paper_of(c) for c in naming}
            if not 0 < len(papers) <= most:
                continue
            for chunk_id in naming:
                by_paper.setdefault(paper_of(chunk_id), []).append(chunk_id)
            wanted = papers if wanted is None else wanted & papers
        return [chunk_id for paper_id in sorted(wanted or ()) for chunk_id in dict.fromkeys(by_paper[paper_id])]

    @staticmethod
    def _paper_similarity(store: Store, paper_id: str, vector: np.ndarray) -> float:
        chunks = [c for c in store.paper_chunks(paper_id, with_embeddings=True) if c.embedding is not None]
        return float(max((c.embedding @ vector for c in chunks), default=0.0))

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
            similarity=round(float(similarity), 6),
            lexical_score=round(bm25.get(chunk.chunk_id, 0.0), 6),
        )
