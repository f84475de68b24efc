"""The only module that imports chromadb: a persistent, cosine-space collection of our own embeddings."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import IndexError_
from rag.types import Chunk

logger = logging.getLogger(__name__)

# Collection-level metadata keys (ours; Chroma's own live in the collection configuration).
META_EMBEDDER = "rag_embedder"
META_CHUNKING = "rag_chunking"
META_STATE = "rag_state"  # "complete" | "writing"
META_FINGERPRINT = "rag_fingerprint"
META_LAST_INGEST = "rag_last_ingest"
META_PAPERS = "rag_papers"

# chromadb 1.5 fails when two threads create a PersistentClient for one path at the same moment (seen
# in the web app: the page's status check and the first question racing): creation is serialised.
_CLIENT_LOCK = threading.Lock()


@dataclass(frozen=True)
class StoredChunk:
    chunk_id: str
    text: str
    metadata: dict[str, Any]
    embedding: np.ndarray | None = None


def chunk_metadata(chunk: Chunk, embed_hash: str, content_hash: str, abstract: str, locations: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat, None-free metadata for one chunk (Chroma accepts only str/int/float/bool values).

    The whole abstract rides along with each chunk: chunks are the unit of embedding, papers the unit
    of display and citation.
    """
    return {
        "paper_id": chunk.paper_id,
        "ordinal": chunk.ordinal,
        "title": chunk.title or "",
        "source": chunk.source,
        "line": chunk.line,
        "date": chunk.date or "",
        "embed_text": chunk.embed_text,
        "abstract": abstract,
        "locations": json.dumps(locations),
        "embed_hash": embed_hash,
        "content_hash": content_hash,
    }


class Store:
    """A Chroma PersistentClient collection under data_dir, owned by one process at a time."""

    def __init__(self, chroma_dir: Path, collection: str = "abstracts"):
        self.chroma_dir = Path(chroma_dir)
        self.collection_name = collection
        self._client = None
        self._collection = None

    # -- client and collection -------------------------------------------------------------
    def _get_client(self):
        if self._client is None:
            os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            self.chroma_dir.mkdir(parents=True, exist_ok=True)
            try:
                with _CLIENT_LOCK:
                    self._client = chromadb.PersistentClient(
                        path=str(self.chroma_dir),
                        settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False),
                    )
            except Exception as e:  # noqa: BLE001 - a broken store is one clear error
                raise IndexError_(
                    f"cannot open the Chroma store at {self.chroma_dir}: {e}. If another program is writing to it, "
                    "wait for it to finish; if the store is damaged, move that folder aside and run `rag ingest`"
                ) from e
        return self._client

    def exists(self) -> bool:
        if not self.chroma_dir.exists():
            return False
        names = [getattr(c, "name", c) for c in self._get_client().list_collections()]
        return self.collection_name in names

    def collection(self, create_with: dict[str, Any] | None = None):
        """The collection; created (cosine space, no Chroma embedder) only when `create_with` metadata is given."""
        if self._collection is None:
            client = self._get_client()
            if self.exists():
                self._collection = client.get_collection(self.collection_name, embedding_function=None)
            elif create_with is not None:
                self._collection = client.create_collection(
                    self.collection_name,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata=create_with,
                    embedding_function=None,
                )
            else:
                raise IndexError_(f"no index at {self.chroma_dir}: run `rag ingest` first")
        return self._collection

    def delete_collection(self) -> None:
        if self.exists():
            self._get_client().delete_collection(self.collection_name)
        self._collection = None

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.collection().metadata or {})

    def update_metadata(self, **values: Any) -> None:
        """Merge values into the collection metadata (Chroma replaces the whole dict on modify)."""
        merged = {**self.metadata, **values}
        merged = {k: v for k, v in merged.items() if not k.startswith("hnsw:")}
        self.collection().modify(metadata=merged)

    @property
    def max_batch_size(self) -> int:
        return int(self._get_client().get_max_batch_size())

    # -- data -----------------------------------------------------------------------------
    def count(self) -> int:
        return int(self.collection().count())

    def stored_hashes(self) -> dict[str, tuple[str, str]]:
        """chunk_id -> (embed_hash, content_hash) of everything stored."""
        result = self.collection().get(include=["metadatas"])
        return {
            i: (str((m or {}).get("embed_hash", "")), str((m or {}).get("content_hash", "")))
            for i, m in zip(result["ids"], result["metadatas"])
        }

    def _batches(self, n: int) -> Iterator[slice]:
        size = max(1, self.max_batch_size)
        for start in range(0, n, size):
            yield slice(start, min(n, start + size))

    def upsert(self, ids: Sequence[str], embeddings: np.ndarray, documents: Sequence[str], metadatas: Sequence[dict]) -> None:
        for part in self._batches(len(ids)):
            self.collection().upsert(
                ids=list(ids[part]),
                embeddings=np.asarray(embeddings[part], dtype=np.float32),
                documents=list(documents[part]),
                metadatas=list(metadatas[part]),
            )

    def update_metadatas(self, ids: Sequence[str], metadatas: Sequence[dict]) -> None:
        """Replace chunks' metadata, keeping their documents and embeddings."""
        for part in self._batches(len(ids)):
            self.collection().update(ids=list(ids[part]), metadatas=list(metadatas[part]))

    def delete(self, ids: Sequence[str]) -> None:
        for part in self._batches(len(ids)):
            self.collection().delete(ids=list(ids[part]))

    def all_chunks(self, with_embeddings: bool = False) -> list[StoredChunk]:
        include = ["documents", "metadatas"] + (["embeddings"] if with_embeddings else [])
        result = self.collection().get(include=include)
        embeddings = result.get("embeddings") if with_embeddings else None
        chunks = []
        for i, chunk_id in enumerate(result["ids"]):
            emb = np.asarray(embeddings[i], dtype=np.float32) if embeddings is not None else None
            chunks.append(StoredChunk(chunk_id, result["documents"][i], dict(result["metadatas"][i] or {}), emb))
        chunks.sort(key=lambda c: c.chunk_id)
        return chunks

    def query(self, embedding: np.ndarray, n: int) -> list[tuple[str, float]]:
        """Nearest chunks as (chunk_id, cosine similarity), best first."""
        n = min(n, self.count())
        if n <= 0:
            return []
        result = self.collection().query(
            query_embeddings=np.asarray(embedding, dtype=np.float32).reshape(1, -1), n_results=n, include=["distances"]
        )
        return [(cid, 1.0 - float(d)) for cid, d in zip(result["ids"][0], result["distances"][0])]
