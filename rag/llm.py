"""The local GGUF model: loading, token counting and streaming chat generation (finding the file: rag.model_files;
the shared message and event types: rag.generation; choosing local or remote: rag.chat_model).

This is the only module that imports llama_cpp. The model is loaded lazily, once, and every use of the
llama.cpp context (generation) happens under one lock: a `Llama` object is not thread-safe.

llama-cpp-python keeps the KV cache of the previous call and reuses the longest common token prefix,
so callers should keep fixed text (the system prompt) first: only the new suffix is evaluated.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import LLMSettings, Settings
from rag.errors import ModelError, QuestionError
from rag.generation import (  # noqa: F401 - ChatModel, Message: re-exported (callers that took them from here)
    ChatModel,
    GenerationEvent,
    GenerationStats,
    Message,
)
from rag.model_files import (  # noqa: F401 - default_model_path, list_models: re-exported for tests/benchmarks
    WHAT_TO_DO,
    check_gguf,
    default_model_path,
    file_sha256,
    gguf_architecture,
    list_models,
    resolve_model_path,
)
from rag.types import ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from llama_cpp import Llama

logger = logging.getLogger(__name__)


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
