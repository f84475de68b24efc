"""Running an exported sentence-transformers model with onnxruntime: the model folder's pipeline, sessions, and the
encoder (tokenise, batch by length, run, pool, L2-normalise).

The ground floor of the onnx side: rag.onnx_export (which checks each new export with this encoder) and
rag.onnx_embedder (which keeps the export cache and loads the encoder from it) both import this module, and it
imports neither.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime


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


class OnnxEncoder:
    """Texts -> float32 L2-normalised vectors with one onnxruntime session (not shared across threads unlocked).

    Loading one from the export cache (`OnnxEncoder.load`) is rag.onnx_embedder's, whose OnnxEncoder extends this.
    """

    def __init__(
        self, model_path: Path, session: onnxruntime.InferenceSession, pipeline: Pipeline, one_text_per_run: bool = False
    ):
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
        # Dynamic int8 quantisation scales each run's activations by the whole input tensor, so a text's vector would
        # depend on the texts (and padding) batched with it: such a graph embeds one text per run, which keeps every
        # vector reproducible (a resumed ingest, a query) and, without padding, is also faster (int8, 2 cores:
        # 77 texts/s one at a time against 69 in batches of 16).
        self.one_text_per_run = one_text_per_run

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
        batch_size = 1 if self.one_text_per_run else batch_size
        tokens = self.tokenize(list(texts))
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
        out = np.zeros((len(tokens), self.dimension), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            feed = self.feed([tokens[i] for i in rows])
            hidden = self.session.run(["last_hidden_state"], feed)[0]
            out[rows] = self.pool(hidden, feed["attention_mask"])
        return out
