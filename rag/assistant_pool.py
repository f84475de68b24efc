"""The assistants behind the web app: one per model (AssistantPool), how many questions are answered at once, the
warm-up and background sentence prefetch before and while serving (Background), and the line naming the model.

Imports no gradio: rag.ui builds the page on top of this.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import Settings
from rag.errors import ModelError, RagError

if TYPE_CHECKING:  # pragma: no cover
    from rag.answer import Assistant

logger = logging.getLogger(__name__)

CONCURRENCY_LIMIT = 2  # one answer generating while the next one retrieves; the model lock serialises generation
SERVER_CONCURRENCY_LIMIT = 4  # with a model server (RAG_LLM__URL): no lock here, the server queues generations


def assistant_concurrency(settings: Settings) -> int:
    """How many questions the app answers at once: settings.ui.concurrency, else a default for the kind of model."""
    if settings.ui.concurrency:
        return settings.ui.concurrency
    return SERVER_CONCURRENCY_LIMIT if settings.llm.url else CONCURRENCY_LIMIT


class AssistantPool:
    """One Assistant per model name, created on first use; all share one Retriever (and so one index).

    With a model server (settings.llm.url) there is one Assistant, for the server's model: the dropdown shows that
    model only, and no Assistant is made per local GGUF.
    """

    def __init__(self, settings: Settings, assistant: Assistant | None = None, background: Background | None = None):
        self.background = background or Background()
        self.settings = settings
        self.remote = bool(settings.llm.url)
        self._lock = threading.Lock()
        self._assistants: dict[str, Assistant] = {}
        self._paths: dict[str, Path | None] = {}
        self.default_name = self._server_model_name(assistant) if self.remote else self._current_model_name()
        if assistant is not None:
            self._assistants[self.default_name] = assistant

    def _current_model_name(self) -> str:
        from rag.model_files import resolve_model_path

        try:
            return resolve_model_path(self.settings.model, self.settings.models_dir).name
        except ModelError:
            return str(self.settings.model or "default")

    def _server_model_name(self, assistant: Assistant | None) -> str:
        """The model the server reports (asked once), or the URL while the server does not answer."""
        if self.settings.llm.server_model:
            return self.settings.llm.server_model
        info = assistant.model_info() if assistant is not None else self._server_assistant().model_info()
        return info.name if info is not None else str(self.settings.llm.url)

    def _server_assistant(self) -> Assistant:
        from rag.answer import Assistant

        with self._lock:
            if not self._assistants:
                self._assistants[""] = Assistant(self.settings)
            return next(iter(self._assistants.values()))

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) for the model dropdown: the configured model, the default model, every GGUF in models/;
        with a model server, its model only."""
        from rag.model_files import list_models

        if self.remote:
            return [(f"{self.default_name} (model server)", self.default_name)]

        found = list_models(self.settings.models_dir)
        with self._lock:
            self._paths = {m.name: (None if m.is_default else m.path) for m in found}
        choices = [(f"{m.name} (default)" if m.is_default else m.name, m.name) for m in found]
        if self.default_name not in {name for _, name in choices}:
            choices.insert(0, (self.default_name, self.default_name))
        return choices

    def _settings_for(self, name: str) -> Settings:
        if name == self.default_name:
            return self.settings
        if name not in self._paths:
            self.choices()
        if name not in self._paths:
            raise ModelError(f"unknown model {name!r}: put the .gguf in {self.settings.models_dir} and reload the page")
        path = self._paths[name]
        return self.settings.model_copy(update={"model": str(path) if path else None})

    def get(self, name: str | None = None) -> Assistant:
        if self.remote:  # one model, the server's, whatever the page sends
            return self._server_assistant()
        name = name or self.default_name
        with self._lock:
            if name in self._assistants:
                return self._assistants[name]
        settings = self._settings_for(name)
        from rag.answer import Assistant

        with self._lock:
            if name not in self._assistants:
                logger.info("creating an assistant for model %s", name)
                self._assistants[name] = Assistant(settings, retriever=self._shared_retriever())
            return self._assistants[name]

    def _shared_retriever(self) -> Any:
        for assistant in self._assistants.values():
            retriever = getattr(assistant, "retriever", None)
            if retriever is not None:
                return retriever
        return None

    def invalidate(self) -> None:
        """Make every assistant re-open the index (after a re-ingest)."""
        with self._lock:
            retrievers = {id(r): r for a in self._assistants.values() if (r := getattr(a, "retriever", None))}
        for retriever in retrievers.values():
            retriever.invalidate()


class Background:
    """The app's background work (embedding the corpus sentences), stopped between two batches when the server
    shuts down: a thread left inside the embedder's native code at exit aborts the process."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def shutdown(self, timeout_s: float = 60.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout_s)


def warm_up(assistant: Assistant, background: Background | None = None) -> None:
    """Open the index and load the embedder and the model before the first visitor, so the first answer is quick
    and no request races another to open the store first. A missing index is not fatal: the page can build it."""
    logger.info("warming up: opening the index, loading the embedder and the model")
    try:
        assistant.warm_up(prefetch=False)
    except RagError as e:
        logger.warning("not warmed up (%s); the page shows the index status and can re-index", e)
        return
    prefetch_in_background(assistant, background or Background())


def prefetch_in_background(assistant: Assistant, background: Background) -> threading.Thread:
    """Embed and save the corpus sentences' vectors (about 13 s on 2 cores the first time, then read from disk)
    while the page is already up; a question asked meanwhile embeds the few sentences it needs itself."""
    return background.start(lambda: _prefetch_quietly(assistant, background.stop), "sentence-prefetch")


def _prefetch_quietly(assistant: Assistant, stop: threading.Event) -> None:
    try:
        assistant.prefetch_sentences(stop=stop)
    except Exception:  # noqa: BLE001 - a background speed-up must never take the server down
        logger.exception("embedding the corpus sentences in the background failed; answers embed them as needed")


def describe_model(assistant: Assistant, settings: Settings) -> str:
    """One line naming the model answers come from: the local GGUF's path, or the server's URL and model id."""
    concurrency = f"{assistant_concurrency(settings)} questions at once"
    try:
        llm = assistant.llm
        if settings.llm.url:
            return f"model: {llm.info().name} on the model server {settings.llm.url} ({concurrency})"
        return f"model: {getattr(llm, 'path', None) or llm.info().name} (local GGUF, run in this process; {concurrency})"
    except RagError as e:
        return f"model: not available yet ({e})"
