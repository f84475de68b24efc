"""Opening the index for a given Settings: the store, checked against the embedder and chunking it was built with."""

from __future__ import annotations

import hashlib

from rag.chunking import chunking_signature
from rag.config import Settings
from rag.embedding import Embedder
from rag.errors import IndexError_
from rag.store import (
    META_CHUNKING,
    META_EMBEDDER,
    META_FINGERPRINT,
    META_LAST_INGEST,
    META_PAPERS,
    META_STATE,
    Store,
)
from rag.types import IndexStatus


def index_fingerprint(content_hashes: dict[str, str], embedder: str, chunking: str) -> str:
    """A short hash of what the index holds and how it was built; changes whenever any chunk does."""
    digest = hashlib.sha256(f"{embedder}\n{chunking}\n".encode())
    for chunk_id in sorted(content_hashes):
        digest.update(f"{chunk_id}={content_hashes[chunk_id]}\n".encode())
    return digest.hexdigest()[:16]


def incompatibility(store: Store, embedder_name: str, chunking: str) -> str | None:
    """What makes an existing index unusable with these settings (another embedder or chunking), or None."""
    meta = store.metadata
    built_with = (meta.get(META_EMBEDDER), meta.get(META_CHUNKING))
    if built_with == (embedder_name, chunking):
        return None
    return (
        f"the index in the {store.location} was built with embedder {built_with[0]!r} and chunking "
        f"{built_with[1]!r}, but the settings ask for {embedder_name!r} and {chunking!r}"
    )


def check_compatible(store: Store, embedder_name: str, chunking: str) -> None:
    """Refuse an index built by another embedder or chunking: mixing vectors would silently rank garbage."""
    reason = incompatibility(store, embedder_name, chunking)
    if reason is not None:
        raise IndexError_(f"{reason}: run `rag ingest` to rebuild it")


def open_index(settings: Settings, embedder: Embedder | None = None) -> Store:
    """The store of a complete, compatible index, or an IndexError_ saying what to run."""
    embedder = embedder or Embedder.for_settings(settings)
    store = Store.for_settings(settings)
    if not store.exists():
        raise IndexError_(f"no index in the {store.location}: run `rag ingest` first")
    check_compatible(store, embedder.name, chunking_signature(settings.chunking))
    if store.metadata.get(META_STATE) != "complete":
        raise IndexError_(
            f"the last ingest into the {store.location} did not finish (interrupted?): run `rag ingest` again"
        )
    return store


def index_status(settings: Settings, store: Store | None = None) -> IndexStatus:
    store = store or open_index(settings)
    meta = store.metadata
    return IndexStatus(
        papers=int(meta.get(META_PAPERS, 0)),
        chunks=store.count(),
        embedder=str(meta.get(META_EMBEDDER, "")),
        chunking=str(meta.get(META_CHUNKING, "")),
        fingerprint=str(meta.get(META_FINGERPRINT, "")),
        last_ingest=meta.get(META_LAST_INGEST) or None,
        location=store.location,
    )
