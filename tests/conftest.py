"""Shared fixtures: the real embedder (loaded once), a real Chroma store in tmp dirs, the bundled corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from rag.config import PROJECT_ROOT, Settings  # noqa: E402
from rag.embedding import Embedder  # noqa: E402

CORPUS_DIR = PROJECT_ROOT / "corpus"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return CORPUS_DIR


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """One real all-MiniLM-L6-v2 for the whole session (loading it takes seconds)."""
    return Embedder()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with an empty data dir of its own."""
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture(scope="session")
def ingested_settings(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Settings:
    """Settings whose data dir holds the bundled corpus, ingested once per session. Do not modify it."""
    from rag.ingest import ingest

    settings = Settings(data_dir=tmp_path_factory.mktemp("ingested") / "data")
    ingest(settings, embedder=embedder)
    return settings


@pytest.fixture(scope="session")
def retriever(ingested_settings: Settings, embedder: Embedder):
    from rag.retrieval import Retriever

    return Retriever(ingested_settings, embedder=embedder)
