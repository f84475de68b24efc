"""A sentence-transformers model run with onnxruntime: exported once from the local weights, cached, loaded offline.

Why: on 2 CPU cores onnxruntime embeds ~1.2-1.5x faster than torch with the same vectors, ~2.2-2.9x with int8
weights (cosine ~0.99 to torch, retrieval on the eval sets held): benchmarks/embedder_backends.py.

The pipeline is the model folder's (modules.json): Transformer (truncated to max_seq_length from
sentence_bert_config.json) -> Pooling (mean or CLS, from 1_Pooling/config.json) -> L2 normalisation, which
`Embedder` always asks for. Tokenisation uses the folder's tokenizer.json (the fast tokenizer sentence-transformers
itself uses); texts are grouped by token length before batching, so a batch pads to its own longest text only.

The export (torch.onnx, then onnxruntime's BERT fusions; optionally int8 dynamic quantisation with per-channel
weight scales) lives in <cache_dir>/<model folder>-<key>/. The key hashes the model's config.json and the names,
sizes and modification times of its weight files, so other weights never reuse an export. Every file is written to
a temporary name in the same folder and renamed once complete and checked against torch on probe texts; a cached
file that fails to load is exported again, once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

logger = logging.getLogger(__name__)

Variant = Literal["fp32", "int8"]

EXPORT_FORMAT = 2  # bump when the export recipe changes: old cached exports are then ignored
OPSET = 17
FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model-int8.onnx"}
# Cosine to torch that a fresh export must reach on the probe texts before it is kept.
MIN_PROBE_COSINE: dict[str, float] = {"fp32": 0.9999, "int8": 0.97}
PROBE_TEXTS = (
    "Retrieval-augmented generation grounds a language model's answers in retrieved passages.",
    "We measure the thermal conductivity of graphene nanoribbons between 10 and 300 K.",
    "short",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


class OnnxExportError(RuntimeError):
    """The model cannot be exported, checked or loaded for onnxruntime (the caller may fall back to torch)."""


def _onnxruntime():
    """onnxruntime, imported with its telemetry off (1.2x on Linux keeps a device id and an event store under
    ~/.cache/Microsoft and would upload them; the switch is read once, at import)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    if os.environ["ORT_DISABLE_TELEMETRY"] == "1":
        onnxruntime.disable_telemetry_events()  # in case someone imported it before us
    return onnxruntime


def default_cache_dir() -> Path:
    """Per-user cache: $XDG_CACHE_HOME/rag-abstracts/embedder, else ~/.cache/rag-abstracts/embedder."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rag-abstracts" / "embedder"


# ---------------------------------------------------------------------------------------- model folder


@dataclass(frozen=True)
class Pipeline:
    """What sentence-transformers does around the transformer, read from the model folder."""

    max_seq_length: int
    pooling: Literal["mean", "cls"]
    dimension: int


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise OnnxExportError(f"cannot read {path}: {e}") from e


def read_pipeline(model_path: Path) -> Pipeline:
    """The module chain of modules.json, if onnxruntime can reproduce it (Transformer -> Pooling [-> Normalize])."""
    modules = _read_json(model_path / "modules.json")
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules] if isinstance(modules, list) else []
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise OnnxExportError(f"unsupported sentence-transformers modules {kinds} in {model_path}")
    pooling_dir = next(m.get("path", "") for m in modules if m.get("type", "").endswith("Pooling"))
    pool = _read_json(model_path / pooling_dir / "config.json")
    modes = [k for k, v in pool.items() if k.startswith("pooling_mode") and v is True]
    known = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
    mode = known.get(modes[0]) if len(modes) == 1 else None
    if mode is None:
        raise OnnxExportError(f"unsupported pooling {modes} in {model_path / pooling_dir}")
    config = _read_json(model_path / "config.json")
    st_config = _read_json(model_path / "sentence_bert_config.json")
    limit = int(config.get("max_position_embeddings", 512))
    max_len = st_config.get("max_seq_length") or _read_json(model_path / "tokenizer_config.json").get("model_max_length")
    max_len = int(max_len or limit)
    dimension = int(pool.get("word_embedding_dimension") or config.get("hidden_size", 0))
    return Pipeline(max_seq_length=min(max_len, limit), pooling=mode, dimension=dimension)


def model_key(model_path: Path) -> str:
    """A short hash of what the exported graph depends on: config.json and the weight files (name, size, mtime)."""
    digest = hashlib.sha256(f"format={EXPORT_FORMAT};opset={OPSET}\n".encode())
    digest.update((model_path / "config.json").read_bytes())
    for path in sorted(model_path.iterdir()):
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES):
            stat = path.stat()
            digest.update(f"\n{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def export_dir(model_path: Path, cache_dir: Path) -> Path:
    return Path(cache_dir) / f"{Path(os.path.abspath(model_path)).name}-{model_key(model_path)}"


# --------------------------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' chatter (tracer warnings, the quantizer's root-logger advice)."""

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(drop)


def _temp_path(folder: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=suffix)
    os.close(fd)
    return Path(name)


def _publish(tmp: Path, dest: Path) -> None:
    """Give a finished file its final name in one step (readers see the old file or the whole new one)."""
    tmp.chmod(0o644)  # mkstemp makes it private; an index dir may be read by others
    os.replace(tmp, dest)


def _torch_model(model_path: Path):
    from transformers import AutoModel

    # eager attention exports the plain MatMul/Softmax pattern that onnxruntime's fusions recognise (sdpa does not)
    return AutoModel.from_pretrained(str(model_path), local_files_only=True, attn_implementation="eager").eval()


def export_onnx(model_path: Path, dest: Path, fuse: bool = True) -> None:
    """Export the transformer of `model_path` to `dest` (fp32), checked against torch before the rename.

    fuse: apply onnxruntime's BERT fusions (Attention, SkipLayerNorm, BiasGelu: contrib ops only onnxruntime runs).
    """
    import torch

    model = _torch_model(model_path)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if getattr(model.config, "type_vocab_size", 0) in (0, None):
        names = names[:2]

    class LastHiddenState(torch.nn.Module):  # transformers 5's forward takes other positional arguments
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, inputs))).last_hidden_state

    dummy = tuple((torch.zeros if n == "token_type_ids" else torch.ones)(2, 8, dtype=torch.long) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    raw = _temp_path(dest.parent, ".raw.onnx")
    fused = _temp_path(dest.parent, ".onnx")
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                LastHiddenState(model).eval(),  # a new Module is in training mode, and export restores the mode
                dummy, str(raw), dynamo=False, opset_version=OPSET,
                input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
            )
        candidates = [fused, raw] if fuse and _fuse(raw, fused, model.config) else [raw]
        for candidate in candidates:
            try:
                _check(candidate, model_path, "fp32", model)
            except OnnxExportError as e:
                if candidate is raw:
                    raise
                logger.info("the fused graph strays from torch (%s): keeping the plain export", e)
                continue
            _publish(candidate, dest)
            return
    finally:
        raw.unlink(missing_ok=True)
        fused.unlink(missing_ok=True)


def _fuse(source: Path, dest: Path, config) -> bool:
    """onnxruntime's BERT fusions; False (the plain graph is kept: same vectors, a little slower) if they fail."""
    try:
        _onnxruntime()
        from onnxruntime.transformers import optimizer

        with _quiet():
            optimized = optimizer.optimize_model(
                str(source), model_type="bert", num_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size), opt_level=1, use_gpu=False,
            )
            optimized.save_model_to_file(str(dest))
    except Exception as e:  # noqa: BLE001
        logger.info("onnxruntime fusions failed (%s): keeping the plain export", e)
        return False
    return True


def quantize_int8(source: Path, dest: Path, model_path: Path) -> None:
    """int8 dynamic quantisation with per-channel weight scales (per-tensor drifts to cosine ~0.94; this ~0.99).

    reduce_range (7-bit weights): x86 CPUs without VNNI saturate u8 x s8 products in full range; costs ~0.001 cosine.
    """
    import onnx

    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _temp_path(dest.parent, ".onnx")
    try:
        with _quiet():
            quantize_dynamic(
                str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # the fused ops carry no type info
            )
        _check(tmp, model_path, "int8")
        _publish(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _check(onnx_path: Path, model_path: Path, variant: Variant, model=None) -> None:
    """Refuse an export whose vectors stray from torch's on the probe texts."""
    import torch

    encoder = OnnxEncoder(model_path, _session(onnx_path, 1), read_pipeline(model_path))
    got = encoder.encode(list(PROBE_TEXTS), batch_size=len(PROBE_TEXTS))
    model = (model if model is not None else _torch_model(model_path)).eval()  # no dropout in the reference
    tokens = encoder.tokenize(list(PROBE_TEXTS))
    with torch.no_grad():
        ref = []
        for ids in tokens:
            feed = {n: torch.tensor(a) for n, a in encoder.feed([ids]).items()}
            hidden = model(**feed).last_hidden_state.numpy()
            ref.append(encoder.pool(hidden, feed["attention_mask"].numpy())[0])
    cosine = float(np.min(np.sum(got * np.stack(ref), axis=1)))
    if cosine < MIN_PROBE_COSINE[variant]:
        raise OnnxExportError(f"the {variant} export strays from torch (cosine {cosine:.5f} < {MIN_PROBE_COSINE[variant]})")
    logger.info("%s export checked against torch: min cosine %.6f", variant, cosine)


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
