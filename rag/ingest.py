"""Corpus files -> chunks -> embeddings -> Chroma, incrementally.

Only chunks that are new or changed are embedded; chunks of papers gone from the corpus are removed.
The whole corpus is parsed before anything is written, so a bad file never leaves a half-written
index. While writing, the collection is marked "writing"; an interrupted run leaves that mark, the
index refuses to serve, and the next run repairs it (upserts are idempotent, ids deterministic).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from rag.chunking import chunk_papers, chunking_signature
from rag.config import Settings
from rag.corpus import load_corpus
from rag.embedding import Embedder
from rag.index import check_compatible, index_fingerprint
from rag.store import (
    META_CHUNKING,
    META_EMBEDDER,
    META_FINGERPRINT,
    META_LAST_INGEST,
    META_PAPERS,
    META_STATE,
    Store,
    chunk_metadata,
)
from rag.types import Chunk, IngestSummary, Paper

logger = logging.getLogger(__name__)


def content_hash(chunk: Chunk, paper: Paper) -> str:
    """Hash of everything stored for a chunk: a change to text, title or location re-upserts it."""
    locations = ";".join(f"{loc.source}:{loc.line}" for loc in paper.locations)
    payload = "\x1f".join([chunk.embed_text, chunk.text, chunk.title or "", chunk.date or "", locations])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def ingest(
    settings: Settings,
    paths: Sequence[Path] | None = None,
    rebuild: bool = False,
    progress: bool = False,
    embedder: Embedder | None = None,
) -> IngestSummary:
    started = time.perf_counter()
    corpus = load_corpus(list(paths) if paths else settings.corpus_paths)  # raises before any write
    papers = {p.paper_id: p for p in corpus.papers}
    chunks = chunk_papers(corpus.papers, settings.chunking)
    hashes = {c.chunk_id: content_hash(c, papers[c.paper_id]) for c in chunks}

    embedder = embedder or Embedder(settings.embedding)
    signature = chunking_signature(settings.chunking)
    store = Store(settings.chroma_dir, settings.collection)
    if rebuild and store.exists():
        logger.info("rebuilding: dropping collection %s", settings.collection)
        store.delete_collection()
    if store.exists():
        check_compatible(store, embedder.name, signature)
    else:
        store.collection(create_with={META_EMBEDDER: embedder.name, META_CHUNKING: signature, META_STATE: "writing"})

    stored = store.content_hashes()
    to_write = [c for c in chunks if stored.get(c.chunk_id) != hashes[c.chunk_id]]
    to_remove = sorted(set(stored) - set(hashes))
    unchanged = len(chunks) - len(to_write)

    if to_write or to_remove or store.metadata.get(META_STATE) != "complete":
        store.update_metadata(**{META_STATE: "writing"})
        _write(store, embedder, to_write, papers, hashes, settings.embedding.batch_size, progress)
        if to_remove:
            store.delete(to_remove)
    store.update_metadata(
        **{
            META_STATE: "complete",
            META_FINGERPRINT: index_fingerprint(hashes, embedder.name, signature),
            META_PAPERS: len(papers),
            META_LAST_INGEST: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    summary = IngestSummary(
        records=len(corpus.records),
        duplicates=corpus.duplicates,
        papers=len(papers),
        chunks_added=len(to_write),
        chunks_unchanged=unchanged,
        chunks_removed=len(to_remove),
        seconds=round(time.perf_counter() - started, 3),
    )
    logger.info("ingest: %s", summary.model_dump())
    return summary


def _write(
    store: Store,
    embedder: Embedder,
    chunks: list[Chunk],
    papers: dict[str, Paper],
    hashes: dict[str, str],
    batch_size: int,
    progress: bool,
) -> None:
    """Embed and upsert in batches, so an interruption keeps every finished batch."""
    if not chunks:
        return
    step = max(1, min(batch_size * 4, store.max_batch_size))
    with tqdm(total=len(chunks), desc="embedding", unit="chunk", disable=not progress, leave=False) as bar:
        for start in range(0, len(chunks), step):
            batch = chunks[start : start + step]
            vectors = embedder.embed([c.embed_text for c in batch])
            metadatas = [
                chunk_metadata(
                    c,
                    hashes[c.chunk_id],
                    papers[c.paper_id].abstract,
                    [loc.model_dump() for loc in papers[c.paper_id].locations],
                )
                for c in batch
            ]
            store.upsert([c.chunk_id for c in batch], vectors, [c.text for c in batch], metadatas)
            bar.update(len(batch))
