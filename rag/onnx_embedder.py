"""A sentence-transformers model run with onnxruntime: exported once from the local weights, cached, loaded offline.

Why: on 2 CPU cores onnxruntime embeds ~1.2-1.5x faster than torch with the same vectors, ~2.2-2.9x with int8
weights (cosine ~0.99 to torch, retrieval on the eval sets held): benchmarks/embedder_backends.py.

The pipeline is the model folder's (modules.json): Transformer (truncated to max_seq_length from
sentence_bert_config.json) -> Pooling (mean or CLS, from 1_Pooling/config.json) -> L2 normalisation, which
`Embedder` always asks for. Tokenisation uses the folder's tokenizer.json (the fast tokenizer sentence-transformers
itself uses); texts are grouped by token length before batching, so a batch pads to its own longest text only.

This module runs the exports and keeps the cache filled (`ensure_export`); making them (export, fusions, int8
quantisation, the check against torch) is rag.onnx_export's job. A cached file that fails to load is exported
again, once.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.onnx_export import (  # export_onnx and quantize_int8 are looked up here, so tests can patch them here
    FILES,
    OnnxExportError,
    Pipeline,
    Variant,
    _onnxruntime,
    _temp_path,
    default_cache_dir,  # noqa: F401 - re-exported (rag.embedding)
    export_dir,
    export_onnx,
    model_key,  # noqa: F401 - re-exported
    quantize_int8,
    read_pipeline,
)

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ the cache


def ensure_export(model_path: Path, cache_dir: Path, variant: Variant) -> Path:
    """The cached export of `variant`, made now if missing (the int8 one is made from the fp32 one)."""
    folder = export_dir(model_path, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".partial-*"):  # left by a killed export; a live one is minutes old at most
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
    fp32 = folder / FILES["fp32"]
    if not fp32.is_file():
        logger.info("exporting %s to onnx in %s (once)", model_path, folder)
        export_onnx(model_path, fp32)
    if variant == "fp32":
        return fp32
    path = folder / FILES[variant]
    if not path.is_file():
        logger.info("quantising the onnx export to int8 in %s (once)", folder)
        quantize_int8(fp32, path, model_path)
    return path


# ------------------------------------------------------------------------------------------ inference


def _session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _temp_path(folder, ".probe").unlink()
    except OSError:
        return False
    return True


def _loads(path: Path) -> bool:
    try:
        _session(path, 1)
    except Exception:  # noqa: BLE001
        return False
    return True


class OnnxEncoder:
    """Texts -> float32 L2-normalised vectors with one onnxruntime session (not shared across threads unlocked)."""

    def __init__(self, model_path: Path, session: onnxruntime.InferenceSession, pipeline: Pipeline):
        from tokenizers import Tokenizer

        tokenizer_file = model_path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise OnnxExportError(f"no tokenizer.json in {model_path} (a fast tokenizer is needed)")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.pad_id = int((self.tokenizer.padding or {}).get("pad_id", 0))
        self.tokenizer.no_padding()  # tokenizer.json ships padding/truncation at 128: batches pad themselves
        self.tokenizer.enable_truncation(pipeline.max_seq_length)
        self.session = session
        self.pipeline = pipeline
        self.inputs = [i.name for i in session.get_inputs()]

    @classmethod
    def load(cls, model_path: Path, cache_dir: Path, variant: Variant, threads: int) -> OnnxEncoder:
        """The cached export, made first if missing; one that fails to load is made again (once).

        A cache dir that cannot be written (a read-only index) still serves the exports it holds; one it lacks is
        made in a temporary folder, for this process only.
        """
        pipeline = read_pipeline(model_path)
        path = export_dir(model_path, cache_dir) / FILES[variant]
        if path.is_file():
            try:
                return cls(model_path, _session(path, threads), pipeline)
            except Exception as e:  # noqa: BLE001 - a truncated or foreign file: make it again
                logger.warning("the cached onnx export %s does not load (%s): exporting it again", path, e)
                with contextlib.suppress(OSError):
                    path.unlink()
                    source = path.with_name(FILES["fp32"])
                    if variant != "fp32" and not _loads(source):  # the int8 file is made from it
                        source.unlink()
        if not _writable(Path(cache_dir)):
            logger.warning("cannot write the embedder cache %s: exporting for this process only", cache_dir)
            with tempfile.TemporaryDirectory(prefix="rag-embedder-") as tmp:
                return cls(model_path, _session(ensure_export(model_path, Path(tmp), variant), threads), pipeline)
        return cls(model_path, _session(ensure_export(model_path, cache_dir, variant), threads), pipeline)

    @property
    def dimension(self) -> int:
        return self.pipeline.dimension

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def feed(self, batch: list[list[int]]) -> dict[str, np.ndarray]:
        longest = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        return {name: arrays[name] for name in self.inputs}

    def pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Pooling then L2 normalisation, as sentence-transformers' Pooling and Normalize modules compute them."""
        if self.pipeline.pooling == "cls":
            vectors = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            vectors = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        tokens = self.tokenize(list(texts))
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
        out = np.zeros((len(tokens), self.dimension), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            feed = self.feed([tokens[i] for i in rows])
            hidden = self.session.run(["last_hidden_state"], feed)[0]
            out[rows] = self.pool(hidden, feed["attention_mask"])
        return out
