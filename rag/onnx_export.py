"""Exporting a sentence-transformers model to ONNX: reading its pipeline, keying the cache folder, exporting,
fusing, quantising and checking each file against torch before it is kept.

The export (torch.onnx, then onnxruntime's BERT fusions; optionally int8 dynamic quantisation with per-channel
weight scales) lives in <cache_dir>/<model folder>-<key>/. The key hashes the model's config.json and the names,
sizes and modification times of its weight files, so other weights never reuse an export. Every file is written to
a temporary name in the same folder and renamed once complete and checked against torch on probe texts.
rag.onnx_embedder runs the exports (and makes a missing or unloadable one again, once) through export_onnx and
quantize_int8, which do the work in a child process (`python -m rag.onnx_export`) so that torch never stays in the
asking process; the model folder's pipeline and the encoder that runs an export are rag.onnx_runtime's.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from rag.onnx_runtime import OnnxEncoder, OnnxExportError, _onnxruntime, _session, read_pipeline

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


def default_cache_dir() -> Path:
    """Per-user cache: $XDG_CACHE_HOME/rag-abstracts/embedder, else ~/.cache/rag-abstracts/embedder."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rag-abstracts" / "embedder"


# ---------------------------------------------------------------------------------------- model folder


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


def export_onnx(model_path: Path, dest: Path) -> None:
    """export_here, run in a child process (see _in_child)."""
    _in_child("export", str(model_path), str(dest))


def quantize_int8(source: Path, dest: Path, model_path: Path) -> None:
    """quantize_here, run in a child process (see _in_child)."""
    _in_child("quantize", str(source), str(dest), str(model_path))


def _in_child(step: str, *args: str) -> None:
    """Run an export step in a child Python: it needs torch and the model's weights (~1 GB), which would otherwise
    stay in the process that asked for the export (an ingest of 100k abstracts peaked at 2.4 GB with them, and at
    2 GB is the limit) long after the step is done. Offline like the parent (its environment is inherited)."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rag.onnx_export", step, *args], env=env, capture_output=True, text=True, check=False
        )
    except OSError as e:  # no child can be started here (a sandbox, an interpreter others may not run): do it here
        logger.warning("cannot start a child process for the onnx %s step (%s): running it in this process", step, e)
        _run_step(step, args)
        return
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise OnnxExportError(f"the onnx {step} step failed: {lines[-1] if lines else f'exit code {done.returncode}'}")


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


def export_here(model_path: Path, dest: Path, fuse: bool = True) -> None:
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


def quantize_here(source: Path, dest: Path, model_path: Path) -> None:
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

    encoder = OnnxEncoder(model_path, _session(onnx_path, 1), read_pipeline(model_path), variant == "int8")
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


# The steps a child runs: name -> (function, number of path arguments).
_STEPS = {"export": (export_here, 2), "quantize": (quantize_here, 3)}


def _run_step(step: str, args: Sequence[str]) -> None:
    """One step in this process (the child's work, or the parent's where no child can be started)."""
    function, _ = _STEPS[step]
    function(*(Path(arg) for arg in args))


def _main(argv: list[str]) -> int:
    """`python -m rag.onnx_export export MODEL DEST` or `... quantize SOURCE DEST MODEL`: one step, in this process."""
    from rag.embedding import force_offline

    force_offline()
    step, args = (argv[0], argv[1:]) if argv else ("", [])
    if step not in _STEPS or len(args) != _STEPS[step][1]:
        sys.stderr.write("usage: python -m rag.onnx_export export MODEL DEST | quantize SOURCE DEST MODEL\n")
        return 2
    try:
        _run_step(step, args)
    except Exception as e:  # noqa: BLE001 - the parent reads the last line
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
