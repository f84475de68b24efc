#!/usr/bin/env python
"""Embedder backends on the same texts: texts/s and cosine to torch, for torch, onnx, onnx-int8 (and openvino).

    python benchmarks/embedder_backends.py [-n 300] [--rounds 2] [--backends torch,onnx,onnx-int8,openvino]
                                           [--out benchmarks/results/embedder_backends.json]

Texts are the bundled corpus's chunks (their embed_text, as ingest embeds them), repeated to N. They are embedded
as ingest does, in calls of batch_size * 4 texts; every call is made by each backend in turn (the order rotating
from call to call), so a burst of load from elsewhere hits all of them alike. Export and load (first use, in a
fresh cache dir unless --cache-dir) are timed apart, after which each backend embeds one warm-up call.

openvino (if importable; not a dependency) runs the plain fp32 ONNX export (onnxruntime's fused ops are not
standard ONNX) through the same tokenisation, length-sorted batching and pooling as the onnx backend, f32 precision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from rag.chunking import chunk_papers  # noqa: E402
from rag.config import EmbeddingSettings, Settings, available_cores  # noqa: E402
from rag.corpus import load_corpus  # noqa: E402
from rag.embedding import Embedder  # noqa: E402

PACKAGES = ("torch", "sentence-transformers", "transformers", "onnx", "onnxruntime", "tokenizers", "openvino", "numpy")
DEFAULT_BACKENDS = "torch,onnx,onnx-int8,openvino"

Embed = Callable[[list[str]], np.ndarray]


def corpus_texts(n: int) -> list[str]:
    settings = Settings()
    chunks = chunk_papers(load_corpus(settings.corpus_paths).papers, settings.chunking)
    texts = [c.embed_text for c in chunks]
    return [texts[i % len(texts)] for i in range(n)]


def openvino_embedder(cache: Path, batch_size: int) -> Embed:
    """The plain fp32 export compiled by OpenVINO, behind OnnxEncoder's tokenisation, batching and pooling."""
    import openvino as ov

    from rag.embedding import default_model_path
    from rag.onnx_embedder import OnnxEncoder, read_pipeline
    from rag.onnx_export import export_here

    model_path = default_model_path()
    plain = cache / "plain.onnx"
    if not plain.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        export_here(model_path, plain, fuse=False)
    compiled = ov.Core().compile_model(
        str(plain),
        "CPU",
        {"INFERENCE_NUM_THREADS": available_cores(), "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()

    class Session:  # the slice of onnxruntime.InferenceSession that OnnxEncoder uses
        def get_inputs(self) -> list[SimpleNamespace]:
            return [SimpleNamespace(name=port.get_any_name()) for port in compiled.inputs]

        def run(self, _outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [request.infer(feed)[compiled.output(0)]]

    encoder = OnnxEncoder(model_path, Session(), read_pipeline(model_path))  # type: ignore[arg-type]
    return lambda texts: encoder.encode(texts, batch_size)


def load_backends(names: list[str], cache: Path, batch_size: int) -> tuple[dict[str, Embed], dict[str, dict]]:
    embedders: dict[str, Embed] = {}
    info: dict[str, dict] = {}
    for name in names:
        started = time.perf_counter()
        if name == "openvino":
            try:
                embed = openvino_embedder(cache / "openvino", batch_size)
            except ImportError:
                print("openvino is not importable: skipped", file=sys.stderr)
                continue
            label = "openvino fp32 (plain onnx export)"
        else:
            embedder = Embedder(EmbeddingSettings(backend=name, batch_size=batch_size, cache_dir=cache))
            embedder.embed(["load"])
            if embedder.backend != name:
                raise SystemExit(f"backend {name} fell back to {embedder.backend}: see the warning above")
            embed, label = embedder.embed, embedder.name
        info[name] = {"name": label, "first_use_s": round(time.perf_counter() - started, 2)}
        embedders[name] = embed
    return embedders, info


def measure(embedders: dict[str, Embed], texts: list[str], step: int, rounds: int) -> dict[str, Any]:
    """Interleaved: each call of `step` texts is made by every backend in turn, the order rotating."""
    names = list(embedders)
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    per_round = {n: [0.0] * rounds for n in names}
    vectors: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for name in names:  # warm-up call (first-run allocations, thread pools)
        embedders[name](texts[:step])
    calls = 0
    for r in range(rounds):
        for start in range(0, len(texts), step):
            block = texts[start : start + step]
            for k in range(len(names)):
                name = names[(calls + k) % len(names)]
                w0, c0 = time.perf_counter(), time.process_time()
                out = embedders[name](block)
                dw, dc = time.perf_counter() - w0, time.process_time() - c0
                wall[name] += dw
                cpu[name] += dc
                per_round[name][r] += dw
                if r == 0:
                    vectors[name].append(out)
            calls += 1
    ref = np.concatenate(vectors["torch"]) if "torch" in vectors else None
    results = {}
    for name in names:
        got = np.concatenate(vectors[name])
        row: dict[str, Any] = {
            "texts_per_s": round(len(texts) * rounds / wall[name], 2),
            "texts_per_s_by_round": [round(len(texts) / s, 2) for s in per_round[name]],
            "cpu_ms_per_text": round(1000 * cpu[name] / (len(texts) * rounds), 2),
            "dtype": str(got.dtype),
            "norm_max_error": float(np.max(np.abs(np.linalg.norm(got, axis=1) - 1))),
        }
        if ref is not None:
            cosine = np.sum(got * ref, axis=1)
            row.update(cosine_to_torch_mean=round(float(cosine.mean()), 6), cosine_to_torch_min=round(float(cosine.min()), 6))
        results[name] = row
    if "torch" in results:
        for row in results.values():
            row["speedup_vs_torch"] = round(row["texts_per_s"] / results["torch"]["texts_per_s"], 2)
    return results


def environment() -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import torch

    return {"cpu": cpu, "cores": available_cores(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "packages": versions, "commit": commit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300, help="texts (corpus chunks, repeated as needed)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the texts")
    parser.add_argument("--batch-size", type=int, default=EmbeddingSettings().batch_size)
    parser.add_argument("--backends", default=DEFAULT_BACKENDS)
    parser.add_argument("--cache-dir", type=Path, default=None, help="export cache (default: a fresh temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embedder_backends.json")
    args = parser.parse_args()

    texts = corpus_texts(args.n)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rag-embedder-bench-") as tmp:
        cache = args.cache_dir or Path(tmp)
        embedders, info = load_backends(args.backends.split(","), cache, args.batch_size)
        started = time.perf_counter()
        results = measure(embedders, texts, step=args.batch_size * 4, rounds=args.rounds)
        seconds = time.perf_counter() - started
    for name, row in results.items():
        row.update(info[name])
    from tokenizers import Tokenizer

    from rag.embedding import default_model_path

    tokenizer = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "texts": len(texts),
        "distinct_texts": len(set(texts)),
        "mean_tokens": round(float(np.mean([len(e.ids) for e in tokenizer.encode_batch(texts)])), 1),
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "call_size": args.batch_size * 4,
        "seconds": round(seconds, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": environment(),
        "backends": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'backend':10s} {'texts/s':>8s} {'x torch':>8s} {'cos mean':>9s} {'cos min':>9s} {'first use s':>11s}")
    for name, row in results.items():
        print(f"{name:10s} {row['texts_per_s']:8.1f} {row.get('speedup_vs_torch', 0):8.2f} "
              f"{row.get('cosine_to_torch_mean', float('nan')):9.5f} {row.get('cosine_to_torch_min', float('nan')):9.5f} "
              f"{row['first_use_s']:11.1f}")
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}; wrote {args.out}")


if __name__ == "__main__":
    main()
