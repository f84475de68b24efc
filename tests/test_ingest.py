"""Ingest into a real Chroma store with the real embedder: incremental, removal, mismatch, interruption, bad files."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from rag.config import Settings
from rag.embedding import Embedder
from rag.errors import CorpusError, IndexError_
from rag.index import index_status, open_index
from rag.ingest import ingest
from rag.retrieval import Retriever
from rag.store import META_STATE

SMALL_FILES = ("000_984080258767f917.txt", "003_ce4bc02b0d96118d.txt")


@pytest.fixture
def small_corpus(tmp_path: Path, corpus_dir: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in SMALL_FILES:
        shutil.copy(corpus_dir / name, folder / name)
    return folder


def test_bundled_corpus_summary_and_index(ingested_settings: Settings):
    status = index_status(ingested_settings)
    assert status.papers == 150
    assert status.chunks >= 150
    assert status.embedder == "sentence-transformers/all-MiniLM-L6-v2#onnx-int8"  # the default backend
    assert status.last_ingest
    store = open_index(ingested_settings)
    meta = store.collection().configuration_json["hnsw"]
    assert meta["space"] == "cosine"
    assert meta["ef_search"] == ingested_settings.store.ef_search  # see test_an_old_index_gets_the_search_breadth
    sample = store.all_chunks()[0].metadata
    assert {"paper_id", "title", "source", "line", "date"} <= sample.keys()


def test_reingest_is_a_noop(settings: Settings, small_corpus: Path, embedder: Embedder):
    first = ingest(settings, [small_corpus], embedder=embedder)
    assert first.records == 15 and first.papers == 15 and first.chunks_added > 0
    fingerprint = index_status(settings).fingerprint

    class NoEmbedding(Embedder):
        def embed(self, texts):  # pragma: no cover - must not be called
            raise AssertionError("nothing should be embedded on an unchanged corpus")

    second = ingest(settings, [small_corpus], embedder=NoEmbedding())
    assert (second.chunks_added, second.chunks_removed) == (0, 0)
    assert second.chunks_unchanged == first.chunks_added
    assert index_status(settings).fingerprint == fingerprint


def test_an_old_index_gets_the_search_breadth(settings: Settings, small_corpus: Path, embedder: Embedder):
    """Chroma rebuilds a small index's HNSW graph from its log at each start, differently each time; at its default
    ef_search (100) a process sometimes missed the best chunk entirely (a paper added by `rag ingest` was found by
    one `rag serve` and not by the next). The writer sets the settings' breadth on an index that lacks it."""
    from rag.store import Store

    ingest(settings, [small_corpus], embedder=embedder)
    store = Store.for_settings(settings)
    store.collection().modify(configuration={"hnsw": {"ef_search": 100}})  # as an index written before the setting
    ingest(settings, [small_corpus], embedder=embedder)
    fresh = Store.for_settings(settings)
    assert fresh.collection().configuration_json["hnsw"]["ef_search"] == settings.store.ef_search == 400


def test_removed_paper_leaves_the_index(settings: Settings, small_corpus: Path, embedder: Embedder):
    ingest(settings, [small_corpus], embedder=embedder)
    path = small_corpus / SMALL_FILES[1]
    lines = path.read_text().splitlines()
    removed_text = lines.pop(3)  # KMMLU abstract
    path.write_text("\n".join(lines) + "\n")
    summary = ingest(settings, [small_corpus], embedder=embedder)
    assert summary.papers == 14 and summary.chunks_removed >= 1
    assert summary.chunks_added == 0 and summary.chunks_updated > 0  # papers below moved up one line: not re-embedded
    assert {(p.source, p.line) for p in Retriever(settings, embedder=embedder).search("EXAONE", k=14)} >= {
        (SMALL_FILES[1], 4)  # the abstract that followed the removed one now sits on its line
    }
    passages = Retriever(settings, embedder=embedder).search("Korean benchmark of expert-level multitask questions", k=14)
    assert all(removed_text[len("Abstract:"):][:80] not in p.text for p in passages)


def test_another_embedder_is_refused_by_readers_and_rebuilt_by_the_next_ingest(
    settings: Settings, small_corpus: Path, embedder: Embedder, tmp_path: Path, caplog
):
    ingest(settings, [small_corpus], embedder=embedder)
    other_folder = tmp_path / "other-embedder"
    other_folder.symlink_to(embedder.path, target_is_directory=True)
    other = settings.model_copy(update={"embedding": settings.embedding.model_copy(update={"model_path": other_folder})})
    with pytest.raises(IndexError_, match="run `rag ingest` to rebuild"):
        Retriever(other).search("anything")
    with caplog.at_level(logging.WARNING):
        summary = ingest(other, [small_corpus])
    assert "rebuilding it" in caplog.text
    assert summary.chunks_added > 0 and summary.chunks_unchanged == 0
    assert index_status(other).embedder.startswith("other-embedder")
    assert Retriever(other).search("Korean benchmark", k=1)


def test_a_chunking_change_is_refused_by_readers_and_rebuilt_by_the_next_ingest(
    settings: Settings, small_corpus: Path, embedder: Embedder
):
    ingest(settings, [small_corpus], embedder=embedder)
    other = settings.model_copy(update={"chunking": settings.chunking.model_copy(update={"max_words": 60})})
    with pytest.raises(IndexError_, match="chunking"):
        open_index(other, embedder)
    summary = ingest(other, [small_corpus], embedder=embedder)
    assert summary.chunks_added > 0 and summary.chunks_unchanged == 0
    assert open_index(other, embedder).metadata[META_STATE] == "complete"


def _dies_after_one_call(embedder: Embedder) -> Embedder:
    """An embedder that embeds once (with `embedder`), then is interrupted, as if killed mid-run."""

    class DiesAfterOneCall(Embedder):
        calls = 0

        def embed(self, texts):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return embedder.embed(texts)

    return DiesAfterOneCall()


def test_an_interrupted_rebuild_is_resumed_by_the_next_rebuild(settings: Settings, small_corpus: Path, embedder: Embedder):
    ingest(settings, [small_corpus], embedder=embedder)
    settings = settings.model_copy(update={"embedding": settings.embedding.model_copy(update={"ingest_window": 3})})
    with pytest.raises(KeyboardInterrupt):
        ingest(settings, [small_corpus], rebuild=True, embedder=_dies_after_one_call(embedder))
    summary = ingest(settings, [small_corpus], rebuild=True, embedder=embedder)
    assert summary.chunks_unchanged == 3 and summary.chunks_added > 0  # the finished window is kept
    assert open_index(settings, embedder).count() == summary.chunks_added + summary.chunks_unchanged


def test_interrupted_ingest_is_refused_then_repaired(settings: Settings, small_corpus: Path, embedder: Embedder):
    settings = settings.model_copy(update={"embedding": settings.embedding.model_copy(update={"ingest_window": 2})})
    with pytest.raises(KeyboardInterrupt):
        ingest(settings, [small_corpus], embedder=_dies_after_one_call(embedder))
    with pytest.raises(IndexError_, match="did not finish"):
        open_index(settings)
    summary = ingest(settings, [small_corpus], embedder=embedder)
    assert summary.chunks_unchanged > 0 and summary.chunks_added > 0  # kept the finished batch
    store = open_index(settings)
    assert store.metadata[META_STATE] == "complete"
    assert store.count() == summary.chunks_added + summary.chunks_unchanged


@pytest.mark.parametrize(
    "content, match",
    [
        (b"Abstract:caf\xe9 au lait " * 20, "UTF-8"),
        (b"", "empty|no abstract"),
    ],
)
def test_bad_file_gives_clear_error_and_leaves_index_untouched(
    settings: Settings, small_corpus: Path, embedder: Embedder, content: bytes, match: str
):
    ingest(settings, [small_corpus], embedder=embedder)
    before = index_status(settings)
    bad = small_corpus / "zzz_bad.txt"
    bad.write_bytes(content)
    with pytest.raises(CorpusError, match=match) as info:
        ingest(settings, [small_corpus], embedder=embedder)
    assert "zzz_bad.txt" in str(info.value)
    after = index_status(settings)
    assert (after.fingerprint, after.chunks) == (before.fingerprint, before.chunks)


def test_store_opens_from_many_threads_at_once(ingested_settings: Settings):
    """chromadb fails when several threads create a client for one path together; the store serialises it."""
    from concurrent.futures import ThreadPoolExecutor

    from rag.store import Store

    def count(_: int) -> int:
        return Store(ingested_settings.chroma_dir, ingested_settings.collection).count()

    with ThreadPoolExecutor(max_workers=4) as pool:
        counts = list(pool.map(count, range(8)))
    assert len(set(counts)) == 1 and counts[0] > 0
