"""Large own corpora, at small sizes with the real parts: the BM25 index persists per fingerprint, an ingest killed
with -9 resumes to exactly the index of one clean run, and 2,000 synthetic papers ingest and answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rag.config import PROJECT_ROOT, Settings

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
from scale import synthetic_corpus  # noqa: E402


def rag(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rag", *args], env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(settings: Settings) -> dict:
    """Everything the index holds, by chunk id: document, metadata (less the ingest time) and embedding."""
    from rag.store import META_LAST_INGEST, Store

    store = Store.for_settings(settings)
    store.reload()  # this process may have opened it before another process wrote it
    got = store.collection().get(include=["documents", "metadatas", "embeddings"])
    chunks = {
        chunk_id: (got["documents"][i], got["metadatas"][i], np.asarray(got["embeddings"][i], dtype=np.float32))
        for i, chunk_id in enumerate(got["ids"])
    }
    meta = {k: v for k, v in store.metadata.items() if k != META_LAST_INGEST}
    return {"chunks": chunks, "meta": meta}


def test_the_lexical_index_is_saved_per_fingerprint_and_loaded_without_reading_the_store(
    tmp_path: Path, embedder, monkeypatch
):
    from rag.ingest import ingest
    from rag.lexical import LEXICAL_DIR
    from rag.retrieval import Retriever
    from rag.store import Store

    corpus = tmp_path / "c.jsonl"
    synthetic_corpus(60, seed=3, path=corpus)
    settings = Settings(data_dir=tmp_path / "data")
    ingest(settings, [corpus], embedder=embedder)
    fingerprint = Store.for_settings(settings).metadata["rag_fingerprint"]
    saved = settings.data_dir / LEXICAL_DIR
    assert [p.name for p in saved.iterdir()] == [fingerprint]

    def no_full_read(self, *args, **kwargs):
        raise AssertionError("the whole store was read to answer a search")

    monkeypatch.setattr(Store, "iter_chunks", no_full_read)
    first = Retriever(settings, embedder=embedder).search("language models", k=3)
    assert len(first) == 3
    monkeypatch.undo()

    with corpus.open("a") as f:
        f.write(json.dumps({"title": "Wombat-Net", "abstract": "Wombat-Net ranks burrow images with a tiny network."}) + "\n")
    ingest(settings, [corpus], embedder=embedder)
    new_fingerprint = Store.for_settings(settings).metadata["rag_fingerprint"]
    assert new_fingerprint != fingerprint
    assert [p.name for p in saved.iterdir()] == [new_fingerprint]  # the old one is gone
    assert Retriever(settings, embedder=embedder).search("burrow images", k=1)[0].title == "Wombat-Net"

    for f in (saved / new_fingerprint).iterdir():  # a damaged saved index is rebuilt from the store
        f.write_bytes(b"garbage")
    assert Retriever(settings, embedder=embedder).search("burrow images", k=1)[0].title == "Wombat-Net"


def test_an_ingest_killed_with_9_resumes_to_the_index_of_one_clean_run(tmp_path: Path, embedder):
    from rag.ingest import ingest

    corpus = tmp_path / "c.jsonl"
    synthetic_corpus(300, seed=5, path=corpus)
    clean = Settings(data_dir=tmp_path / "clean")
    ingest(clean, [corpus], embedder=embedder)

    killed = Settings(data_dir=tmp_path / "killed")
    env = {**os.environ, "RAG_DATA_DIR": str(killed.data_dir), "RAG_EMBEDDING__INGEST_WINDOW": "32"}
    proc = subprocess.Popen([sys.executable, "-m", "rag", "-v", "ingest", str(corpus)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    written = 0
    while time.monotonic() < deadline and proc.poll() is None:
        chroma = killed.data_dir / "chroma"
        if chroma.exists():
            from rag.store import Store

            try:
                written = Store.for_settings(killed).count()
            except Exception:  # noqa: BLE001 - the store is being created
                written = 0
            if written >= 40:
                break
        time.sleep(0.5)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert written >= 40

    status = rag(["status"], env)
    assert status.returncode != 0 and "did not finish" in status.stderr  # nothing half-visible
    resumed = rag(["ingest", "--json", str(corpus)], env)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["chunks_unchanged"] >= written - 16  # what was written is not embedded again

    a, b = snapshot(clean), snapshot(killed)
    assert a["meta"] == b["meta"]
    assert a["chunks"].keys() == b["chunks"].keys()
    for chunk_id, (doc, meta, vector) in a["chunks"].items():
        other = b["chunks"][chunk_id]
        assert (doc, meta) == (other[0], other[1]), chunk_id
        np.testing.assert_allclose(vector, other[2], atol=1e-5)


@pytest.mark.slow
@pytest.mark.llm
def test_two_thousand_synthetic_papers_ingest_and_answer(tmp_path: Path):
    corpus = tmp_path / "c.jsonl"
    synthetic_corpus(2000, seed=11, path=corpus)
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data"), "RAG_CORPUS_PATHS": json.dumps([str(corpus)])}
    started = time.monotonic()
    ingest = rag(["ingest", "--json"], env, timeout=1800)
    assert ingest.returncode == 0, ingest.stderr
    summary = json.loads(ingest.stdout)
    assert summary["papers"] == 2000 and summary["chunks_added"] >= 2000
    print(f"2000 papers, {summary['chunks_added']} chunks ingested in {time.monotonic() - started:.0f} s")
    first_line = json.loads(corpus.read_text().splitlines()[0])
    # a synthetic abstract's sentences recur in other papers; its title (random words) is its own
    search = rag(["search", first_line["title"], "--json", "--k", "5"], env)
    assert search.returncode == 0, search.stderr
    assert any(p["text"] == first_line["abstract"] for p in json.loads(search.stdout))
    ask = rag(["ask", f"What does the paper '{first_line['title']}' say?", "--json"], env)
    assert ask.returncode == 0, ask.stderr
    answer = json.loads(ask.stdout)
    assert answer["passages"] and answer["timings"]["retrieve_s"] < 5
