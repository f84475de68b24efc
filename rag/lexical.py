"""The BM25 index over the chunks, persisted beside the index and loaded memory-mapped.

It is keyed by the collection's fingerprint (which changes whenever any chunk does): `rag ingest` builds and saves
it from the chunks it just wrote, and a process that finds none for the current fingerprint builds it from the
store, page by page, and saves it. Loading is a memory map of a few arrays: a process starts answering without
reading every chunk into Python. Rows are chunk ids; chunk ids are 'paper_id:ordinal'.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from rag.text import stemmer

logger = logging.getLogger(__name__)

LEXICAL_DIR = "lexical"  # under the data dir: one folder per fingerprint (the newest only)
IDS_FILE = "chunk_ids.json"
FORMAT = "bm25s-v1"


def _bm25s():
    import bm25s

    # bm25s sets its logger to DEBUG when imported; let it inherit the level the entry point configured.
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def index_text(title: str | None, text: str) -> str:
    """What BM25 reads of a chunk: its title, then its text (as the embedder does)."""
    return f"{title}. {text}" if title else text


class LexicalIndex:
    """BM25 over chunk texts; `search` gives (chunk_id, score) best first, only positive scores."""

    def __init__(self, bm25: object, chunk_ids: list[str], fingerprint: str):
        self.bm25 = bm25
        self.chunk_ids = chunk_ids
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.chunk_ids)

    @classmethod
    def build(cls, chunks: Iterable[tuple[str, str]], fingerprint: str) -> LexicalIndex:
        """From (chunk_id, index text) pairs; tokenised in batches so a large corpus never holds its strings twice."""
        bm25s = _bm25s()
        started = time.perf_counter()
        pairs = sorted(chunks)  # rows in chunk-id order: the same index whoever builds it, ties broken alike
        ids = [chunk_id for chunk_id, _ in pairs]
        texts = [text for _, text in pairs]
        del pairs
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer(), show_progress=False)
        del texts
        bm25 = bm25s.BM25()
        if ids:
            bm25.index(tokens, show_progress=False)
        logger.info("lexical index: %d chunks built in %.2fs", len(ids), time.perf_counter() - started)
        return cls(bm25, ids, fingerprint)

    def search(self, query: str, n: int) -> list[tuple[str, float]]:
        n = min(n, len(self.chunk_ids))
        if n <= 0:
            return []
        tokens = _bm25s().tokenize([query], stopwords="en", stemmer=stemmer(), return_ids=False, show_progress=False)
        # Each query term once: BM25 sums a term's score per occurrence, so "model ... model ... model" would let
        # one repeated filler word outweigh the words that tell papers apart.
        known = list(dict.fromkeys(t for t in tokens[0] if t in self.bm25.vocab_dict))
        if not known:  # nothing of the query is in the corpus (or it is all stopwords): no lexical ranking
            return []
        docs, scores = self.bm25.retrieve([known], k=n, show_progress=False, n_threads=1)
        return [(self.chunk_ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]

    def rare_term_chunks(self, text: str, max_chunks: int) -> list[str] | None:
        """The chunks holding the rarest indexed term of `text` (a name: "LangBridge", "NV-Embed"), when at most
        max_chunks hold it; None when no term of it is indexed or each is held by more chunks (a common name)."""
        if not self.chunk_ids:
            return None
        tokens = _bm25s().tokenize([text], stopwords="en", stemmer=stemmer(), return_ids=False, show_progress=False)
        rarest: list[str] | None = None
        for term in dict.fromkeys(t for t in tokens[0] if t in self.bm25.vocab_dict):
            docs, scores = self.bm25.retrieve([[term]], k=min(max_chunks + 1, len(self.chunk_ids)), show_progress=False,
                                              n_threads=1)
            holding = [self.chunk_ids[int(d)] for d, s in zip(docs[0], scores[0]) if s > 0]
            if len(holding) <= max_chunks and (rarest is None or len(holding) < len(rarest)):
                rarest = holding
        return rarest

    # -- persistence --------------------------------------------------------------------------------

    def save(self, root: Path) -> Path | None:
        """Write to root/<fingerprint> atomically (a temp folder renamed); drop older fingerprints. None if unwritable."""
        folder = root / self.fingerprint
        try:
            root.mkdir(parents=True, exist_ok=True)
            temp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
            if self.chunk_ids:
                self.bm25.save(str(temp), show_progress=False)
            (temp / IDS_FILE).write_text(json.dumps({"format": FORMAT, "fingerprint": self.fingerprint,
                                                     "chunk_ids": self.chunk_ids}))
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(temp, folder)
        except OSError as e:
            logger.warning("could not save the lexical index under %s (%s): it is rebuilt at each start", root, e)
            return None
        for other in root.iterdir():
            if other.name != self.fingerprint:
                shutil.rmtree(other, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, root: Path, fingerprint: str) -> LexicalIndex | None:
        """The saved index for this fingerprint, memory-mapped; None when there is none (or it is unreadable)."""
        folder = root / fingerprint
        try:
            meta = json.loads((folder / IDS_FILE).read_text())
            if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
                return None
            ids: list[str] = meta["chunk_ids"]
            bm25 = _bm25s().BM25.load(str(folder), mmap=True, show_progress=False) if ids else _bm25s().BM25()
        except (OSError, ValueError, KeyError) as e:
            if folder.exists():
                logger.warning("the lexical index in %s is unreadable (%s): rebuilding it", folder, e)
            return None
        return cls(bm25, ids, fingerprint)


def paper_of(chunk_id: str) -> str:
    return chunk_id.rsplit(":", 1)[0]


def ordinal_of(chunk_id: str) -> int:
    return int(chunk_id.rsplit(":", 1)[1])


def first_chunk_ids(paper_ids: Sequence[str]) -> list[str]:
    return [f"{p}:0" for p in paper_ids]
