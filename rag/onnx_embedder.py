"""A sentence-transformers model run with onnxruntime: exported once from the local weights, cached, loaded offline.

Why: on 2 CPU cores onnxruntime embeds ~1.2-1.5x faster than torch with the same vectors, ~2.2-2.9x with int8
weights (cosine ~0.99 to torch, retrieval on the eval sets held): benchmarks/embedder_backends.py.

The pipeline is the model folder's (modules.json): Transformer (truncated to max_seq_length from
sentence_bert_config.json) -> Pooling (mean or CLS, from 1_Pooling/config.json) -> L2 normalisation, which
`Embedder` always asks for. Tokenisation uses the folder's tokenizer.json (the fast tokenizer sentence-transformers
itself uses); texts are grouped by token length before batching, so a batch pads to its own longest text only.

This module runs the exports, keeps the cache filled (`ensure_export`) and loads the encoder from it
(`OnnxEncoder.load`); making them (export, fusions, int8 quantisation, the check against torch) is rag.onnx_export's
job, running them (pipeline, tokenisation, pooling) rag.onnx_runtime's. A cached file that fails to load is
exported again, once.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path

from rag import onnx_runtime
from rag.onnx_export import (  # export_onnx and quantize_int8 are looked up here, so tests can patch them here
    FILES,
    Variant,
    _temp_path,
    default_cache_dir,  # noqa: F401 - re-exported (rag.embedding)
    export_dir,
    export_onnx,
    model_key,  # noqa: F401 - re-exported
    quantize_int8,
)
from rag.onnx_runtime import (  # noqa: F401 - OnnxExportError, Pipeline, read_pipeline: re-exported (tests, benchmarks)
    OnnxExportError,
    Pipeline,
    _session,
    read_pipeline,
)

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


# ------------------------------------------------------------------------------------------ loading


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


class OnnxEncoder(onnx_runtime.OnnxEncoder):
    """rag.onnx_runtime's encoder (texts -> float32 L2-normalised vectors), loaded from the export cache."""

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
                return cls(model_path, _session(path, threads), pipeline, variant == "int8")
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
                session = _session(ensure_export(model_path, Path(tmp), variant), threads)
                return cls(model_path, session, pipeline, variant == "int8")
        session = _session(ensure_export(model_path, cache_dir, variant), threads)
        return cls(model_path, session, pipeline, variant == "int8")
