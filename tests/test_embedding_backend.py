"""Embedder backends: onnx gives torch's vectors, keeps order and batch size, exports once, survives a bad cache."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag import onnx_embedder
from rag.config import EmbeddingSettings, Settings
from rag.embedding import DEFAULT_EMBEDDER_NAME, Embedder, default_model_path
from rag.errors import EmbeddingError

TEXTS = [
    "Retrieval-augmented generation grounds answers in passages retrieved from a corpus of abstracts.",
    "x",
    "We propose a graph neural network for molecular property prediction. " * 12,  # ~250 word pieces
    "",
    "Ünïcode café: naïve Bayes classifiers with 10^6 features",
    "Transformers " * 400,  # truncated to max_seq_length
    "A short question about protein folding?",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def assert_contract(vectors: np.ndarray, n: int) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (n, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


class Counter:
    """Wraps a function of rag.onnx_embedder and counts its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture(scope="module")
def torch_embedder() -> Embedder:
    return Embedder(EmbeddingSettings(backend="torch"))


@pytest.fixture(scope="module")
def reference(torch_embedder: Embedder) -> np.ndarray:
    return torch_embedder.embed(TEXTS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A cache dir with the fp32 and int8 exports, made by a first pair of embedders; the calls they made."""
    cache_dir = tmp_path_factory.mktemp("embedder-cache")
    with pytest.MonkeyPatch.context() as mp:
        export, quantize = Counter(onnx_embedder.export_onnx), Counter(onnx_embedder.quantize_int8)
        mp.setattr(onnx_embedder, "export_onnx", export)
        mp.setattr(onnx_embedder, "quantize_int8", quantize)
        for backend in ("onnx", "onnx-int8"):
            Embedder(EmbeddingSettings(backend=backend, cache_dir=cache_dir)).embed(["warm up"])
    return cache_dir, {"export": export.calls, "quantize": quantize.calls}


@pytest.fixture
def counters(monkeypatch: pytest.MonkeyPatch) -> dict[str, Counter]:
    export, quantize = Counter(onnx_embedder.export_onnx), Counter(onnx_embedder.quantize_int8)
    monkeypatch.setattr(onnx_embedder, "export_onnx", export)
    monkeypatch.setattr(onnx_embedder, "quantize_int8", quantize)
    return {"export": export, "quantize": quantize}


def test_onnx_vectors_equal_torch_and_keep_the_name(cache, reference, torch_embedder):
    embedder = Embedder(EmbeddingSettings(backend="onnx", cache_dir=cache[0]))
    vectors = embedder.embed(TEXTS)
    assert embedder.backend == "onnx"
    assert_contract(vectors, len(TEXTS))
    assert cosines(vectors, reference).min() >= 0.9999
    assert embedder.name == torch_embedder.name == DEFAULT_EMBEDDER_NAME  # an index built by torch stays valid
    assert embedder.dimension == 384
    assert embedder.embed([]).shape == (0, 384)


def test_order_is_kept_whatever_the_lengths_and_the_batch_size_applies(cache, reference, monkeypatch):
    embedder = Embedder(EmbeddingSettings(backend="onnx", cache_dir=cache[0], batch_size=3))
    embedder.embed(["load"])
    runs = []
    session = embedder._onnx.session
    original = session.run
    monkeypatch.setattr(session, "run", lambda names, feed: runs.append(len(feed["input_ids"])) or original(names, feed),
                        raising=False)
    order = [5, 1, 2, 0, 6, 3, 4]  # long, short, long, ...: sorting by length must not leak into the output
    vectors = embedder.embed([TEXTS[i] for i in order])
    assert runs == [3, 3, 1]
    assert cosines(vectors, reference[order]).min() >= 0.9999
    singles = np.concatenate([embedder.embed([TEXTS[i]]) for i in order])  # no padding at all
    assert cosines(vectors, singles).min() >= 0.9999


def test_the_export_is_made_once_and_reused(cache, counters):
    cache_dir, first = cache
    assert first == {"export": 1, "quantize": 1}
    folder = onnx_embedder.export_dir(default_model_path(), cache_dir)
    assert sorted(p.name for p in folder.iterdir()) == ["model-int8.onnx", "model.onnx"]  # no partial files left
    for backend in ("onnx", "onnx-int8"):
        embedder = Embedder(EmbeddingSettings(backend=backend, cache_dir=cache_dir))
        embedder.embed(["again"])
        assert embedder.backend == backend
    assert (counters["export"].calls, counters["quantize"].calls) == (0, 0)


def test_the_cache_key_follows_the_model_files(tmp_path: Path):
    model = default_model_path()
    copy = tmp_path / "model"
    copy.mkdir()
    for item in model.iterdir():
        (copy / item.name).symlink_to(item)
    assert onnx_embedder.model_key(copy) == onnx_embedder.model_key(model)
    (copy / "config.json").unlink()
    (copy / "config.json").write_text((model / "config.json").read_text() + "\n")
    assert onnx_embedder.model_key(copy) != onnx_embedder.model_key(model)  # another model never reuses an export


def test_a_corrupt_cached_export_is_made_again(cache, reference, counters, tmp_path: Path, caplog):
    cache_dir = tmp_path / "cache"
    shutil.copytree(cache[0], cache_dir)
    folder = onnx_embedder.export_dir(default_model_path(), cache_dir)
    (folder / "model.onnx").write_bytes(b"not an onnx model")
    with caplog.at_level(logging.WARNING):
        embedder = Embedder(EmbeddingSettings(backend="onnx", cache_dir=cache_dir))
        vectors = embedder.embed(TEXTS)
    assert embedder.backend == "onnx" and counters["export"].calls == 1
    assert "does not load" in caplog.text
    assert cosines(vectors, reference).min() >= 0.9999
    assert (folder / "model.onnx").stat().st_size > 1_000_000

    (folder / "model-int8.onnx").write_bytes(b"\x00" * 100)  # the fp32 source is good: only quantised again
    int8 = Embedder(EmbeddingSettings(backend="onnx-int8", cache_dir=cache_dir))
    assert_contract(int8.embed(TEXTS), len(TEXTS))
    assert (counters["export"].calls, counters["quantize"].calls) == (1, 1)


def test_a_failed_export_falls_back_to_torch_under_the_fp32_name(reference, monkeypatch, tmp_path: Path, caplog):
    def broken(*args, **kwargs):
        raise onnx_embedder.OnnxExportError("simulated export failure")

    monkeypatch.setattr(onnx_embedder, "export_onnx", broken)
    for backend in ("onnx", "onnx-int8"):  # int8's name is asked first: it is the fp32 name, as the vectors are
        with caplog.at_level(logging.WARNING):
            embedder = Embedder(EmbeddingSettings(backend=backend, cache_dir=tmp_path / "cache"))
            assert embedder.name == DEFAULT_EMBEDDER_NAME
            vectors = embedder.embed(TEXTS)
        assert embedder.backend == "torch" and "falling back to torch" in caplog.text
        assert cosines(vectors, reference).min() >= 0.9999


def test_a_failed_quantisation_falls_back_to_fp32_onnx(cache, reference, monkeypatch, tmp_path: Path, caplog):
    def broken(*args, **kwargs):
        raise onnx_embedder.OnnxExportError("simulated quantisation failure")

    monkeypatch.setattr(onnx_embedder, "quantize_int8", broken)
    fresh = tmp_path / "cache"
    shutil.copytree(cache[0], fresh)
    for int8_file in fresh.rglob("model-int8.onnx"):
        int8_file.unlink()
    with caplog.at_level(logging.WARNING):
        embedder = Embedder(EmbeddingSettings(backend="onnx-int8", cache_dir=fresh))
        assert embedder.name == DEFAULT_EMBEDDER_NAME and embedder.backend == "onnx"
    assert "falling back to onnx fp32" in caplog.text
    assert cosines(embedder.embed(TEXTS), reference).min() >= 0.9999


def test_an_unwritable_cache_dir_exports_for_this_process_only(reference, tmp_path: Path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        embedder = Embedder(EmbeddingSettings(backend="onnx", cache_dir=blocker / "cache"))
        vectors = embedder.embed(TEXTS[:3])
    assert embedder.backend == "onnx" and "cannot write the embedder cache" in caplog.text
    assert cosines(vectors, reference[:3]).min() >= 0.9999


def test_a_read_only_cache_serves_the_exports_it_holds(cache, counters, monkeypatch):
    monkeypatch.setattr(onnx_embedder, "_writable", lambda folder: False)
    for backend in ("onnx", "onnx-int8"):
        embedder = Embedder(EmbeddingSettings(backend=backend, cache_dir=cache[0]))
        embedder.embed(["read only"])
        assert embedder.backend == backend
    assert (counters["export"].calls, counters["quantize"].calls) == (0, 0)


def test_int8_has_its_own_name_and_close_vectors(cache, reference, tmp_path: Path):
    fp32 = Embedder(EmbeddingSettings(backend="onnx", cache_dir=cache[0]))
    int8 = Embedder(EmbeddingSettings(backend="onnx-int8", cache_dir=cache[0]))
    assert int8.name != fp32.name and int8.name.startswith(DEFAULT_EMBEDDER_NAME)
    custom = tmp_path / "my-minilm"
    custom.symlink_to(default_model_path(), target_is_directory=True)
    names = {Embedder(EmbeddingSettings(model_path=custom, backend=b, cache_dir=cache[0])).name for b in ("onnx", "onnx-int8")}
    assert names == {"my-minilm", "my-minilm#onnx-int8"}
    vectors = int8.embed(TEXTS)
    assert_contract(vectors, len(TEXTS))
    assert cosines(vectors, reference).mean() >= 0.98  # measured ~0.994 (per-channel int8 weights)


def test_cache_dir_defaults(monkeypatch, tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.embedder_cache_dir == tmp_path / "data" / "embedder"
    assert Embedder.for_settings(settings).cache_dir == tmp_path / "data" / "embedder"
    chosen = Settings(data_dir=tmp_path / "data", embedding=EmbeddingSettings(cache_dir=tmp_path / "elsewhere"))
    assert Embedder.for_settings(chosen).cache_dir == tmp_path / "elsewhere"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Embedder(EmbeddingSettings()).cache_dir == tmp_path / "xdg" / "rag-abstracts" / "embedder"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Embedder(EmbeddingSettings()).cache_dir == tmp_path / "home" / ".cache" / "rag-abstracts" / "embedder"


def test_onnxruntime_telemetry_stays_off(cache, tmp_path: Path):
    """onnxruntime 1.2x on Linux keeps a device id and an event store under ~/.cache/Microsoft: never created."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path / "home")
    code = (
        "from pathlib import Path; from rag.config import EmbeddingSettings; from rag.embedding import Embedder; "
        f"e = Embedder(EmbeddingSettings(backend='onnx', cache_dir=Path({str(cache[0])!r}))); e.embed(['x']); "
        "assert e.backend == 'onnx'"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "home" / ".cache" / "Microsoft").exists()


def test_the_export_runs_in_a_child_so_torch_never_stays_in_the_process(tmp_path: Path):
    """An ingest of 100k abstracts peaked at 2.4 GB while the export's torch and weights (~1 GB) stayed loaded."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from rag.config import EmbeddingSettings\n"
        "from rag.embedding import Embedder\n"
        f"embedder = Embedder(EmbeddingSettings(backend='onnx-int8', cache_dir=Path({str(tmp_path / 'cache')!r})))\n"
        "embedder.embed(['warm up'])\n"
        "print(json.dumps({'backend': embedder.backend, 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"backend": "onnx-int8", "torch": False}
    assert (next((tmp_path / "cache").iterdir()) / "model-int8.onnx").is_file()
