"""The only module that imports chromadb: a persistent, cosine-space collection of our own embeddings."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
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
META_LAYOUT = "rag_layout"  # how chunk metadata is laid out; an older layout is rewritten (not re-embedded) by ingest
LAYOUT = "abstract-once-v3"  # v3: no embed_text copy (title + document give it)
OPTIONAL_KEYS = ("abstract", "embed_text")  # keys only some chunks carry, or that older layouts had

# chromadb 1.5 fails when two threads create a PersistentClient for one path at the same moment (seen
# in the web app: the page's status check and the first question racing): creation is serialised.
_CLIENT_LOCK = threading.Lock()


SERVER_HELP = "start one with `chroma run --path DIR --host 127.0.0.1 --port PORT`, or unset RAG_STORE__URL"


def _http_client(url: str, timeout_s: float):
    """A checked HttpClient for a Chroma server: one IndexError_ naming the URL when it cannot be used."""
    from urllib.parse import urlsplit

    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IndexError_(f"the Chroma URL {url!r} is not an http(s)://HOST:PORT address: {SERVER_HELP}")
    port = parts.port or (443 if parts.scheme == "https" else 8000)
    try:
        client = chromadb.HttpClient(
            host=parts.hostname, port=port, ssl=parts.scheme == "https",
            settings=ChromaSettings(anonymized_telemetry=False, chroma_server_http_timeout=timeout_s),
        )
        server_version = client.get_version()
        client.get_max_batch_size()  # an endpoint every compatible server has
    except Exception as e:  # noqa: BLE001 - connection refused, a foreign HTTP server, an old Chroma: one clear line
        reason = str(e).split("\n")[0][:200]
        if "connect" in reason.lower() or "timed out" in reason.lower():
            raise IndexError_(f"cannot reach the Chroma server at {url} ({reason}): is it running? {SERVER_HELP}") from e
        raise IndexError_(
            f"{url} does not answer as a Chroma server this client (chromadb {chromadb.__version__}) can use "
            f"({reason}): check the URL and port, or run a Chroma server of version 1.x there"
        ) from e
    logger.info("index: Chroma server %s (server version %s)", url, server_version)
    return client


def _writable(folder: Path) -> bool:
    """Whether Chroma can open the store in place (it writes its SQLite journal even to read)."""
    return os.access(folder, os.W_OK) and all(os.access(p, os.W_OK) for p in folder.rglob("*") if p.is_file())


def _read_only_snapshot(folder: Path) -> Path:
    """A private copy of a store we may not write to (a read-only disk or another user's index), removed at exit:
    Chroma cannot open a store it cannot write, but questions only read."""
    copy = Path(tempfile.mkdtemp(prefix="rag-index-snapshot-"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    shutil.copytree(folder, copy / "chroma")
    for path in [copy / "chroma", *(copy / "chroma").rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    logger.warning("the index at %s is read-only: answering from a copy of it in %s", folder, copy)
    return copy / "chroma"


def collection_gone(error: BaseException) -> bool:
    """Whether a Chroma error says the collection does not exist (never made, or dropped by a rebuild's swap)."""
    return type(error).__name__ == "NotFoundError" or "does not exist" in str(error)


@dataclass(frozen=True)
class StoredChunk:
    chunk_id: str
    text: str
    metadata: dict[str, Any]
    embedding: np.ndarray | None = None


def chunk_metadata(chunk: Chunk, embed_hash: str, content_hash: str, abstract: str, locations: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat, None-free metadata for one chunk (Chroma accepts only str/int/float/bool values).

    Chunks are the unit of embedding, papers the unit of display and citation, and the whole abstract is stored
    once per paper: on the first chunk ('paper_id:0') of a paper split into several chunks, and not at all for a
    paper that is one chunk (its document is the abstract). See `paper_abstract`.
    """
    metadata: dict[str, Any] = {
        "paper_id": chunk.paper_id,
        "ordinal": chunk.ordinal,
        "title": chunk.title or "",
        "source": chunk.source,
        "line": chunk.line,
        "date": chunk.date or "",
        "locations": json.dumps(locations),
        "embed_hash": embed_hash,
        "content_hash": content_hash,
    }
    if chunk.ordinal == 0 and chunk.text != abstract:
        metadata["abstract"] = abstract
    return metadata


def paper_abstract(first_chunk_text: str, first_chunk_metadata: dict[str, Any]) -> str:
    """The whole abstract of a paper, from its first chunk (the inverse of chunk_metadata's rule)."""
    return str(first_chunk_metadata.get("abstract") or first_chunk_text)


class Store:
    """One Chroma collection: embedded (a PersistentClient on data_dir/chroma, one process at a time) or on a Chroma
    server (`url`, an HttpClient: several processes, on several machines, share it)."""

    def __init__(self, chroma_dir: Path, collection: str = "abstracts", url: str | None = None,
                 connect_timeout_s: float = 10.0, ef_search: int = 400):
        self.chroma_dir = Path(chroma_dir)
        self.collection_name = collection
        self.url = url.rstrip("/") if url else None
        self.connect_timeout_s = connect_timeout_s
        self.ef_search = ef_search
        self._client = None
        self._client_path = ""
        self._collection = None

    @classmethod
    def for_settings(cls, settings: Any, collection: str | None = None) -> Store:
        """The store the settings name (rag.config.Settings: data_dir, collection, store.url)."""
        return cls(settings.chroma_dir, collection or settings.collection, url=settings.store.url,
                   connect_timeout_s=settings.store.connect_timeout_s, ef_search=settings.store.ef_search)

    @property
    def location(self) -> str:
        """Where the index lives, for logs and `rag status`."""
        return f"Chroma server {self.url}" if self.url else f"embedded store {self.chroma_dir}"

    # -- client and collection -------------------------------------------------------------
    def _get_client(self, create: bool = False):
        """The Chroma client; the store's folder is made only for a writer (`create`), so readers write nothing."""
        if self._client is None and self.url:
            self._client = _http_client(self.url, self.connect_timeout_s)
        if self._client is None:
            if not create and not self.chroma_dir.is_dir():
                raise IndexError_(f"no index in the {self.location}: run `rag ingest` first")
            os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            path = self.chroma_dir
            try:
                path.mkdir(parents=True, exist_ok=True)
                if not create and not _writable(path):
                    path = _read_only_snapshot(path)
            except OSError as e:
                raise IndexError_(f"cannot open the Chroma store at {self.chroma_dir}: {e}") from e
            self._client_path = str(path)
            try:
                with _CLIENT_LOCK:
                    self._client = chromadb.PersistentClient(
                        path=str(path),
                        settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False),
                    )
            except Exception as e:  # noqa: BLE001 - a broken store is one clear error
                raise IndexError_(
                    f"cannot open the Chroma store at {self.chroma_dir}: {e}. If another program is writing to it, "
                    "wait for it to finish; if the store is damaged, move that folder aside and run `rag ingest`"
                ) from e
            logger.info("index: %s", self.location)
        return self._client

    def exists(self) -> bool:
        if not self.url and not self.chroma_dir.exists():
            return False
        names = [getattr(c, "name", c) for c in self._get_client().list_collections()]
        return self.collection_name in names

    def collection(self, create_with: dict[str, Any] | None = None):
        """The collection; created (cosine space, no Chroma embedder) only when `create_with` metadata is given."""
        if self._collection is None:
            client = self._get_client(create=create_with is not None)
            try:
                self._collection = client.get_collection(self.collection_name, embedding_function=None)
            except Exception as e:  # noqa: BLE001 - chromadb raises NotFoundError (ValueError before 1.0)
                if not collection_gone(e):
                    raise IndexError_(f"cannot open the index in the {self.location}: {e}") from e
                if create_with is None:
                    raise IndexError_(f"no index in the {self.location}: run `rag ingest` first") from e
                self._collection = client.create_collection(
                    self.collection_name,
                    configuration={"hnsw": {"space": "cosine", "ef_search": self.ef_search}},
                    metadata=create_with,
                    embedding_function=None,
                )
        return self._collection

    def ensure_search_breadth(self) -> None:
        """Give an index written before ef_search was set (or with another value) this store's HNSW search breadth;
        a writer's job (readers never modify the collection)."""
        hnsw = (self.collection().configuration_json or {}).get("hnsw") or {}
        if hnsw.get("ef_search") != self.ef_search:
            logger.info("HNSW search breadth: ef_search %s -> %d", hnsw.get("ef_search"), self.ef_search)
            self.collection().modify(configuration={"hnsw": {"ef_search": self.ef_search}})

    def delete_collection(self) -> None:
        if self.exists():
            self._get_client().delete_collection(self.collection_name)
        self._collection = None

    def reload(self) -> None:
        """Forget this process's Chroma state for the store, so the next call reads it afresh from disk.

        The embedded Chroma keeps a store's segments in memory per process and does not see another process's
        writes (a read then fails with "Error finding id"); after a re-ingest by another process, a reader must
        start a fresh Chroma system for the path. Anything still using the old one finishes on its snapshot."""
        from chromadb.api.shared_system_client import SharedSystemClient

        if not self.url:  # a server sees every writer: nothing to forget
            stale = SharedSystemClient._identifier_to_system.pop(self._client_path or str(self.chroma_dir), None)
            if stale is not None:
                try:  # stopping it persists what it had applied of the other writer's log, for the fresh one to read
                    stale.stop()
                except Exception as e:  # noqa: BLE001 - a failed stop only costs this process the fresher view
                    logger.info("stopping the stale Chroma system failed: %s", e)
        self._client, self._collection = None, None

    def reopen(self) -> str:
        """Look the collection up again by name (another process may have rebuilt it) and return its id.

        A collection object is a snapshot: its metadata and id are those it had when it was fetched."""
        self._collection = None
        return str(self.collection().id)

    @property
    def collection_id(self) -> str:
        return str(self.collection().id)

    def replace(self, name: str) -> None:
        """Put this collection in the place of the collection called `name` (dropped), taking its name.

        A rebuild is written into a collection of its own and swapped in only when complete, so a reader keeps
        answering from the old index meanwhile, and an interrupted rebuild leaves the old index as it was."""
        client = self._get_client()
        if name in {getattr(c, "name", c) for c in client.list_collections()}:
            client.delete_collection(name)
        self.collection().modify(name=name)
        self.collection_name = name
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
        return {
            c.chunk_id: (str(c.metadata.get("embed_hash", "")), str(c.metadata.get("content_hash", "")))
            for c in self.iter_chunks(page=5000, documents=False)
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
        """Replace chunks' metadata, keeping their documents and embeddings.

        Chroma merges an update into the stored metadata; a key given as None is deleted, so the optional keys
        are sent as None where absent (an abstract stays only where chunk_metadata puts it)."""
        replacing = [{**dict.fromkeys(OPTIONAL_KEYS), **m} for m in metadatas]
        for part in self._batches(len(ids)):
            self.collection().update(ids=list(ids[part]), metadatas=replacing[part])

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

    def _stored(self, result: dict, with_embeddings: bool) -> list[StoredChunk]:
        embeddings = result.get("embeddings") if with_embeddings else None
        documents = result.get("documents") or [""] * len(result["ids"])
        return [
            StoredChunk(chunk_id, documents[i] or "", dict(result["metadatas"][i] or {}),
                        np.asarray(embeddings[i], dtype=np.float32) if embeddings is not None else None)
            for i, chunk_id in enumerate(result["ids"])
        ]

    def iter_chunks(self, page: int = 2000, documents: bool = True) -> Iterator[StoredChunk]:
        """Every chunk, a page at a time (memory stays bounded on a large index), in storage order."""
        include = ["metadatas"] + (["documents"] if documents else [])
        offset = 0
        while True:
            result = self.collection().get(include=include, limit=page, offset=offset)
            if not result["ids"]:
                return
            yield from self._stored(result, with_embeddings=False)
            offset += len(result["ids"])

    def get(self, ids: Sequence[str], with_embeddings: bool = False) -> dict[str, StoredChunk]:
        """The stored chunks with these ids (those that exist), by id."""
        if not ids:
            return {}
        include = ["documents", "metadatas"] + (["embeddings"] if with_embeddings else [])
        result = self.collection().get(ids=list(dict.fromkeys(ids)), include=include)
        return {c.chunk_id: c for c in self._stored(result, with_embeddings)}

    def paper_chunks(self, paper_id: str, with_embeddings: bool = False) -> list[StoredChunk]:
        """Every chunk of one paper, in order."""
        include = ["documents", "metadatas"] + (["embeddings"] if with_embeddings else [])
        result = self.collection().get(where={"paper_id": paper_id}, include=include)
        return sorted(self._stored(result, with_embeddings), key=lambda c: int(c.metadata.get("ordinal", 0)))

    def papers_matching(self, pattern: str, max_chunks: int) -> list[str]:
        """Ids of the papers with a chunk whose text matches the regex (Chroma's where_document $regex, Rust
        syntax), from at most max_chunks matching chunks, in store order."""
        result = self.collection().get(where_document={"$regex": pattern}, limit=max_chunks, include=["metadatas"])
        return list(dict.fromkeys(str(m["paper_id"]) for m in result["metadatas"] or []))

    def query(self, embedding: np.ndarray, n: int) -> list[tuple[str, float]]:
        """Nearest chunks as (chunk_id, cosine similarity), best first."""
        n = min(n, self.count())
        if n <= 0:
            return []
        result = self.collection().query(
            query_embeddings=np.asarray(embedding, dtype=np.float32).reshape(1, -1), n_results=n, include=["distances"]
        )
        return [(cid, 1.0 - float(d)) for cid, d in zip(result["ids"][0], result["distances"][0])]
