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
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from rag.chunking import chunk_papers, chunking_signature
from rag.config import Settings
from rag.corpus import CorpusLoad, load_corpus
from rag.datadir import writer_lock
from rag.embedding import Embedder
from rag.index import check_compatible, incompatibility, index_fingerprint
from rag.lexical import LEXICAL_DIR, LexicalIndex, index_text
from rag.store import (
    META_CHUNKING,
    META_EMBEDDER,
    META_FINGERPRINT,
    META_LAST_INGEST,
    META_LAYOUT,
    META_PAPERS,
    META_STATE,
    LAYOUT,
    Store,
    chunk_metadata,
)
from rag.types import Chunk, IngestSummary, Paper

logger = logging.getLogger(__name__)


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def chunk_hashes(chunk: Chunk, paper: Paper) -> tuple[str, str]:
    """(embed_hash, content_hash): the first changes only with the embedded text, the second with anything stored.

    A paper that merely moved (its line shifted because a line above it was edited) keeps its
    embedding: only its metadata is rewritten.
    """
    locations = ";".join(f"{loc.source}:{loc.line}" for loc in paper.locations)
    embed_hash = _hash(chunk.embed_text)
    return embed_hash, _hash(embed_hash, chunk.text, paper.abstract, chunk.title or "", chunk.date or "", locations)


REBUILD_SUFFIX = "-rebuild"


def ingest(
    settings: Settings,
    paths: Sequence[Path] | None = None,
    rebuild: bool = False,
    progress: bool = False,
    embedder: Embedder | None = None,
) -> IngestSummary:
    """Bring the index in line with the corpus; one writer at a time per data dir (others wait their turn).

    A rebuild (asked for, or needed because the embedder or chunking changed) is written into a collection of its
    own and swapped in when complete: readers keep the old index until then, an interrupted rebuild leaves it as
    it was, and the next rebuild resumes it without re-embedding what it wrote.
    """
    started = time.perf_counter()
    corpus = load_corpus(list(paths) if paths else settings.corpus_paths)  # raises before any write
    embedder = embedder or Embedder.for_settings(settings)
    with writer_lock(settings.data_dir):
        name, signature = embedder.name, chunking_signature(settings.chunking)
        current = Store.for_settings(settings)
        reason = current.exists() and incompatibility(current, name, signature)
        if reason and not rebuild:  # new settings (or a new default embedder): re-embed all, the old index serving meanwhile
            logger.warning("%s: rebuilding it; the old index serves until the new one is complete", reason)
            rebuild = True
        leftover = Store.for_settings(settings, settings.collection + REBUILD_SUFFIX)
        if leftover.exists():  # an interrupted rebuild, never visible: resumed by a rebuild with its settings, else dropped
            if rebuild and not incompatibility(leftover, name, signature):
                logger.info("resuming the unfinished rebuild %s", leftover.collection_name)
            else:
                logger.info("dropping the unfinished rebuild %s", leftover.collection_name)
                leftover.delete_collection()
        store = Store.for_settings(settings, settings.collection + REBUILD_SUFFIX if rebuild else None)
        summary, chunks = _sync(store, corpus, embedder, settings, progress)
        del corpus  # the BM25 build needs only the chunks' words: free the parsed abstracts first (100k: ~0.5 GB)
        if rebuild:
            logger.info("rebuilt: %s replaces %s", store.collection_name, settings.collection)
            store.replace(settings.collection)
        rows = [(c.chunk_id, index_text(c.title, c.text)) for c in chunks]
        del chunks
        _save_lexical(settings, str(store.metadata.get(META_FINGERPRINT, "")), rows)
    summary.seconds = round(time.perf_counter() - started, 3)
    logger.info("ingest: %s", summary.model_dump())
    return summary


def _save_lexical(settings: Settings, fingerprint: str, rows: list[tuple[str, str]]) -> None:
    """Build and save the BM25 index of what was just written (chunk id, index text), so no reader has to read the
    whole store for it. The rows are handed over: the list is emptied as the build takes them."""
    root = settings.data_dir / LEXICAL_DIR
    if LexicalIndex.load(root, fingerprint) is None:
        LexicalIndex.build(_drain(rows), fingerprint).save(root)


def _drain(rows: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    rows.reverse()
    while rows:
        yield rows.pop()


def _sync(
    store: Store, corpus: CorpusLoad, embedder: Embedder, settings: Settings, progress: bool
) -> tuple[IngestSummary, list[Chunk]]:
    """Embed and write what is new or changed, rewrite moved metadata, remove what is gone; mark the index complete."""
    papers = {p.paper_id: p for p in corpus.papers}
    chunks = chunk_papers(corpus.papers, settings.chunking)
    hashes = {c.chunk_id: chunk_hashes(c, papers[c.paper_id]) for c in chunks}
    signature = chunking_signature(settings.chunking)
    if store.exists():
        check_compatible(store, embedder.name, signature)
        store.ensure_search_breadth()
    else:
        store.collection(
            create_with={META_EMBEDDER: embedder.name, META_CHUNKING: signature, META_STATE: "writing", META_LAYOUT: LAYOUT}
        )

    stored = store.stored_hashes()
    to_embed = [c for c in chunks if stored.get(c.chunk_id, ("", ""))[0] != hashes[c.chunk_id][0]]
    # Same embedded text (so same document too), other metadata: rewrite the metadata only. An index written with an older metadata layout gets every stored chunk's metadata rewritten (no re-embedding).
    relayout = store.metadata.get(META_LAYOUT) != LAYOUT
    embedding = {c.chunk_id for c in to_embed}
    to_update = [
        c
        for c in chunks
        if c.chunk_id not in embedding
        and c.chunk_id in stored
        and (relayout or stored[c.chunk_id][1] != hashes[c.chunk_id][1])
    ]
    to_remove = sorted(set(stored) - set(hashes))

    if to_embed or to_update or to_remove or relayout or store.metadata.get(META_STATE) != "complete":
        store.update_metadata(**{META_STATE: "writing"})
        if to_update:
            store.update_metadatas([c.chunk_id for c in to_update], [_metadata(c, papers, hashes) for c in to_update])
        _write(store, embedder, to_embed, papers, hashes, settings.embedding.ingest_window, progress)
        if to_remove:
            store.delete(to_remove)
    store.update_metadata(
        **{
            META_STATE: "complete",
            META_LAYOUT: LAYOUT,
            META_FINGERPRINT: index_fingerprint({k: v[1] for k, v in hashes.items()}, embedder.name, signature),
            META_PAPERS: len(papers),
            META_LAST_INGEST: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    return IngestSummary(
        records=len(corpus.records),
        duplicates=corpus.duplicates,
        papers=len(papers),
        chunks_added=len(to_embed),
        chunks_updated=len(to_update),
        chunks_unchanged=len(chunks) - len(to_embed) - len(to_update),
        chunks_removed=len(to_remove),
        seconds=0.0,
    ), chunks


def _write(
    store: Store,
    embedder: Embedder,
    chunks: list[Chunk],
    papers: dict[str, Paper],
    hashes: dict[str, tuple[str, str]],
    window: int,
    progress: bool,
) -> None:
    """Embed and upsert in windows, so an interruption keeps every finished window.

    Each window is embedded in one call (which sorts its texts by length, so batches pad little) while the window
    before it is written to Chroma in a second thread; at most one write is in flight, and an interruption lets it
    finish before it propagates."""
    if not chunks:
        return
    step = max(1, min(window, store.max_batch_size))
    with (
        tqdm(total=len(chunks), desc="embedding", unit="chunk", disable=not progress, leave=False) as bar,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-ingest-write") as writer,
    ):
        pending: Future | None = None
        for start in range(0, len(chunks), step):
            batch = chunks[start : start + step]
            vectors = embedder.embed([c.embed_text for c in batch])
            metadatas = [_metadata(c, papers, hashes) for c in batch]
            if pending is not None:
                pending.result()  # a failed write stops the run here, with its own error
            pending = writer.submit(store.upsert, [c.chunk_id for c in batch], vectors, [c.text for c in batch], metadatas)
            pending.add_done_callback(lambda _, n=len(batch): bar.update(n))
        if pending is not None:
            pending.result()


def _metadata(chunk: Chunk, papers: dict[str, Paper], hashes: dict[str, tuple[str, str]]) -> dict:
    paper = papers[chunk.paper_id]
    embed_hash, content = hashes[chunk.chunk_id]
    return chunk_metadata(chunk, embed_hash, content, paper.abstract, [loc.model_dump() for loc in paper.locations])
