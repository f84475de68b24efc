"""The web app: a Gradio chat over the corpus, with a sources panel, settings, index status and an /ask API.

`build_app()` returns the app without launching it (tests drive it); `serve()` launches it on loopback.
Callbacks hold no pipeline logic: they call the Assistant and format what it returns with rag.ui_html, which
HTML-escapes every piece of corpus or model text before it reaches the page. The page loads nothing from any
host but the app's own (system fonts, analytics off, no share link unless asked).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check

import gradio as gr  # noqa: E402

from starlette.middleware import Middleware  # noqa: E402

from rag.config import Settings  # noqa: E402
from rag.errors import ModelError, RagError  # noqa: E402
from rag.types import Answer, ChatTurn  # noqa: E402
from rag.web_guard import SameOriginOnly  # noqa: E402
from rag.ui_html import (  # noqa: E402
    CURSOR,
    STOPPED_NOTE,
    esc,
    render_answer,
    render_error,
    render_index_status,
    render_other_passages,
    render_retrieving,
    render_sources,
    render_streaming,
)

if TYPE_CHECKING:  # pragma: no cover
    from rag.answer import Assistant

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CSS_PATH = STATIC_DIR / "ui.css"
TITLE = "Abstracts assistant"
CONCURRENCY_LIMIT = 2  # one answer generating while the next one retrieves; the model lock serialises generation
SERVER_CONCURRENCY_LIMIT = 4  # with a model server (RAG_LLM__URL): no lock here, the server queues generations
QUEUE_MAX_SIZE = 64
MAX_UPLOAD_BYTES = 1024  # no component takes a file; Gradio's /upload route is refused anything bigger

#: Real questions about the bundled corpus, shown in the empty chat.
EXAMPLE_QUESTIONS: tuple[str, ...] = (
    "What sparsity level can sparse finetuning reach for MPT text generation without an accuracy drop?",
    "In which parameter sizes were the EXAONE 3.5 instruction-tuned language models released?",
    "How does Text4VPR match text descriptions to images for place recognition?",
    "How many expert-level multiple-choice questions does the KMMLU Korean benchmark contain?",
)


# ----------------------------------------------------------------------------------------- assistants


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
        from rag.llm import resolve_model_path

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
        from rag.llm import list_models

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


# ------------------------------------------------------------------------------------------ callbacks


@dataclass
class ChatSession:
    """One browser tab's conversation (kept in gr.State, so tabs never share it)."""

    messages: list[dict[str, Any]] = field(default_factory=list)  # what the Chatbot shows (escaped HTML)
    turns: list[ChatTurn] = field(default_factory=list)  # what the Assistant reads: plain question/answer text
    answer: Answer | None = None  # the last finished answer (drives the sources panel)
    streaming: bool = False  # an answer is being written into the last message
    turn: int = 0  # incremented per question; a stopped stream that wakes up late sees it is stale

    def owns(self, turn: int) -> bool:
        """Whether the stream of this turn may still write into the chat (not stopped, not superseded)."""
        return self.streaming and self.turn == turn


def _user_message(question: str) -> dict[str, Any]:
    return {"role": "user", "content": f'<div class="rag-question">{esc(question)}</div>'}


def _bot_message(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def _buttons(running: bool) -> tuple[Any, Any]:
    """(send, stop) visibility."""
    return gr.update(visible=not running), gr.update(visible=running)


def _user_error(e: Exception) -> str:
    if isinstance(e, RagError):
        return str(e)
    return f"unexpected error ({type(e).__name__}): see the server log"


class ChatCallbacks:
    """Every UI callback; each calls the Assistant (or the index) and formats the result."""

    def __init__(self, settings: Settings, pool: AssistantPool):
        self.settings = settings
        self.pool = pool

    # -- chat

    def start(self, question: str, session: ChatSession) -> tuple[Any, ...]:
        """Move the typed question into the chat at once and show the Stop button."""
        question = (question or "").strip()
        if not question or session.streaming:
            return gr.update(), session.messages, session, "", *_buttons(session.streaming)
        session.messages = [*session.messages, _user_message(question), _bot_message(render_streaming(question, "", "", None))]
        session.streaming = True
        session.turn += 1
        return "", session.messages, session, question, *_buttons(True)

    def respond(
        self,
        question: str,
        session: ChatSession,
        k: float | None,
        model: str | None,
        temperature: float | None,
        max_tokens: float | None,
    ) -> Iterator[tuple[Any, ...]]:
        """Stream one answer into the last chat bubble; yields (chatbot, session, sources, others)."""
        if not question:
            yield session.messages, session, gr.update(), gr.update()
            return
        turn, standalone, text, passages = session.turn, "", "", None
        try:
            assistant = self.pool.get(model)
            stream = assistant.stream(
                question,
                list(session.turns),
                k=int(k) if k else None,
                temperature=temperature,
                max_tokens=int(max_tokens) if max_tokens else None,
            )
            with contextlib.closing(stream):  # Stop closes us, and this closes the stream: the model lock is freed
                for event in stream:
                    if not session.owns(turn):
                        return  # stopped while the model was producing this event
                    if event.kind == "done" and event.answer is not None:
                        yield self._finish(session, question, event.answer)
                        return
                    if event.kind == "error":
                        raise RagError(event.text)
                    sources: Any = gr.update()
                    if event.kind == "query":
                        standalone = event.text
                    elif event.kind == "passages":
                        passages = event.passages
                        sources = render_retrieving(passages)
                    elif event.kind == "token":
                        text += event.text
                    n_passages = len(passages) if passages is not None else None
                    session.messages[-1] = _bot_message(render_streaming(question, standalone, text, n_passages))
                    yield list(session.messages), session, sources, gr.update()
            raise RagError("the answer stream ended without a final answer")
        except Exception as e:  # noqa: BLE001 - whatever failed, the tab must not stay stuck "answering"
            if not isinstance(e, RagError):
                logger.exception("answering %r failed", question)
            if not session.owns(turn):
                return
            session.streaming = False
            session.messages[-1] = _bot_message(render_error(_user_error(e)))
            yield session.messages, session, gr.update(), gr.update()
            raise gr.Error(_user_error(e), title="Could not answer", print_exception=not isinstance(e, RagError)) from e

    def _finish(self, session: ChatSession, question: str, answer: Answer) -> tuple[Any, ...]:
        session.messages[-1] = _bot_message(render_answer(answer))
        session.turns = [*session.turns, ChatTurn(role="user", content=question), ChatTurn(role="assistant", content=answer.answer)]
        session.answer = answer
        session.streaming = False
        return list(session.messages), session, render_sources(answer), render_other_passages(answer)

    def finished(self, session: ChatSession) -> tuple[Any, ...]:
        """After an answer ended or was stopped: the chat as the server has it, and the Send button back.

        Stop runs at the same time as the page cancels the answer, so a token update sent just before the
        cancel can reach the page after Stop's "Stopped." note; this runs once the cancel is complete and
        puts the note back."""
        return session.messages, *_buttons(session.streaming)

    def stopped(self, session: ChatSession) -> tuple[Any, ...]:
        """After Stop: keep what was written, say it was stopped; the unfinished turn stays out of the history."""
        if session.streaming and session.messages and session.messages[-1]["role"] == "assistant":
            content = session.messages[-1]["content"].replace(CURSOR, "")
            session.messages[-1] = _bot_message(content + STOPPED_NOTE)
        session.streaming = False
        return session.messages, session, *_buttons(False)

    def new_chat(self) -> tuple[Any, ...]:
        session = ChatSession()
        return session.messages, session, render_sources(None), render_other_passages(None), "", *_buttons(False)

    def example(self, evt: gr.SelectData) -> str:
        value = evt.value
        return str(value.get("text", "") if isinstance(value, dict) else value)

    # -- index

    def refresh(self) -> tuple[str, Any]:
        """On page load: the index status, and the models now in models/."""
        return self.index_status(), gr.update(choices=self.pool.choices())

    def index_status(self) -> str:
        from rag.index import index_status

        try:
            return render_index_status(index_status(self.settings))
        except RagError as e:
            return render_index_status(None, str(e))

    def reindex(self, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> str:  # noqa: B008 - gradio's idiom
        from rag.ingest import ingest

        progress(0, desc="Reading the corpus")
        try:
            summary = ingest(self.settings, progress=True)
        except RagError as e:
            raise gr.Error(str(e), title="Re-index failed") from e
        self.pool.invalidate()
        prefetch_in_background(self.pool.get(), self.pool.background)  # new papers' sentences now, not per question
        gr.Info(
            f"Indexed {summary.papers} papers: {summary.chunks_added} chunks embedded, "
            f"{summary.chunks_unchanged} unchanged, {summary.chunks_removed} removed ({summary.seconds:.1f}s)."
        )
        return self.index_status()

    # -- API

    def ask(self, question: str, history: list[dict[str, str]] | None = None, k: int | None = None) -> dict[str, Any]:
        """Answer a question about the paper abstracts, with cited passages.

        Args:
            question: The question (a follow-up is rewritten with the history into a standalone one).
            history: Earlier turns, oldest first: [{"role": "user" or "assistant", "content": "..."}].
            k: Passages to retrieve; None uses the server's setting.

        Returns:
            The Answer as JSON: answer, abstained, citations [{n, source, line, quote, score, ...}], passages,
            unsupported sentences, standalone_question, model, timings.
        """
        try:
            turns = [ChatTurn.model_validate(t) for t in (history or [])]
        except ValueError as e:
            logger.warning("/ask refused: bad history")
            raise gr.Error(f"bad history: {e}", print_exception=False) from e
        try:
            answer = self.pool.get().ask(question, turns, k=k)
        except RagError as e:
            logger.warning("/ask refused: %s", e)  # one line per rejected request, no traceback
            raise gr.Error(str(e), title="Could not answer", print_exception=False) from e
        return answer.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------- app


def theme() -> gr.themes.Base:
    """System fonts only: the page requests no web font from anywhere."""
    return gr.themes.Default(
        primary_hue="indigo",
        neutral_hue="slate",
        radius_size="md",
        font=[gr.themes.Font("system-ui"), gr.themes.Font("-apple-system"), gr.themes.Font("Segoe UI"), "sans-serif"],
        font_mono=[gr.themes.Font("ui-monospace"), gr.themes.Font("SFMono-Regular"), gr.themes.Font("Menlo"), "monospace"],
    )


def launch_options() -> dict[str, Any]:
    """What RagApp.launch() passes to Gradio unless told otherwise (Gradio 6 takes theme and CSS at launch)."""
    return {
        "theme": theme(),
        "css_paths": [CSS_PATH],
        "footer_links": ["api"],
        "run_history": False,
        "mcp_server": False,
        "ssr_mode": False,
        "pwa": False,
        "share": False,
        "show_error": True,
        "enable_monitoring": False,
        # The app takes no files, but Gradio's upload route exists on every app: keep what it accepts tiny.
        "max_file_size": MAX_UPLOAD_BYTES,
        # A page of another site may not drive this one (Gradio itself only withholds the CORS header).
        "app_kwargs": {"middleware": [Middleware(SameOriginOnly)]},
    }


class RagApp(gr.Blocks):
    """gr.Blocks whose launch() applies this app's theme, CSS and offline defaults."""

    def launch(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().launch(*args, **{**launch_options(), **kwargs})


def _header(settings: Settings) -> str:
    return (
        f'<div class="rag-header"><div class="rag-brand">{esc(TITLE)}</div>'
        '<div class="rag-tagline">Answers from the paper abstracts in the local index, with the sentences that '
        "support them. Runs offline on a small local model: check the sources.</div></div>"
    )


def build_app(settings: Settings, assistant: Assistant | None = None, background: Background | None = None) -> RagApp:
    """The whole web app, not launched. With no assistant, one is created per model on first use."""
    pool = AssistantPool(settings, assistant, background)
    cb = ChatCallbacks(settings, pool)
    llm = settings.llm
    limit = assistant_concurrency(settings)  # questions answered at once (every "assistant" event shares it)
    with RagApp(title=TITLE, analytics_enabled=False, fill_width=True) as app:
        session = gr.State(ChatSession())
        pending = gr.State("")
        gr.HTML(_header(settings), elem_id="rag-header")

        with gr.Row(equal_height=False, elem_id="rag-main"):
            with gr.Column(scale=3, min_width=420, elem_id="rag-chat-col"):
                chatbot = gr.Chatbot(
                    elem_id="rag-chat",
                    show_label=False,
                    height="64vh",
                    min_height=360,
                    layout="bubble",
                    buttons=[],
                    feedback_options=None,
                    latex_delimiters=[],
                    group_consecutive_messages=False,
                    placeholder="<div class='rag-placeholder'><strong>Ask about the papers in the corpus.</strong>"
                    "<br>Try one of these:</div>",
                    examples=[{"text": q} for q in EXAMPLE_QUESTIONS],
                )
                with gr.Row(elem_id="rag-input-row"):
                    question = gr.Textbox(
                        placeholder="Ask a question about the abstracts… (Enter to send)",
                        show_label=False, lines=1, max_lines=6, scale=8, elem_id="rag-question", autofocus=True,
                        container=False,
                    )
                    send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="rag-send")
                    stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, visible=False, elem_id="rag-stop")
                    new_chat = gr.Button("New chat", scale=1, min_width=116, elem_id="rag-new")
            with gr.Column(scale=2, min_width=340, elem_id="rag-sources-col"):
                sources = gr.HTML(render_sources(None), elem_id="rag-sources")
                with gr.Accordion("Other retrieved passages", open=False, elem_id="rag-others-acc"):
                    others = gr.HTML(render_other_passages(None), elem_id="rag-others")
                with gr.Accordion("Settings and index", open=False, elem_id="rag-settings"):
                    with gr.Row():
                        k = gr.Slider(1, 20, value=settings.retrieval.k, step=1, label="Passages to retrieve", elem_id="rag-k")
                        model = gr.Dropdown(
                            choices=pool.choices(), value=pool.default_name, label="Model", elem_id="rag-model",
                            info=f"Served by {llm.url}" if pool.remote else "The default model, then every .gguf in models/",
                        )
                    with gr.Row():
                        temperature = gr.Slider(
                            0.0, 1.5, value=llm.temperature, step=0.05, label="Temperature", info="0 is deterministic"
                        )
                        max_tokens = gr.Slider(16, 1024, value=llm.max_tokens, step=16, label="Max answer tokens")
                    index_html = gr.HTML(elem_id="rag-index-status")
                    reindex_btn = gr.Button("Re-index corpus", size="sm", elem_id="rag-reindex")

        settings_inputs = [k, model, temperature, max_tokens]
        private: dict[str, Any] = {"api_visibility": "private"}
        start_args = dict(fn=cb.start, inputs=[question, session], outputs=[question, chatbot, session, pending, send, stop],
                          queue=False, **private)
        respond_args = dict(fn=cb.respond, inputs=[pending, session, *settings_inputs], outputs=[chatbot, session, sources, others],
                            show_progress="hidden", concurrency_id="assistant", concurrency_limit=limit,
                            # a stopped answer can leave the page believing its submission is still pending; with the
                            # default trigger_mode "once" the next question would then never be sent (start() already
                            # refuses a second question while one is being answered)
                            trigger_mode="multiple", **private)
        running = []
        for trigger in (question.submit, send.click):
            event = trigger(**start_args).then(**respond_args)
            running.append(event)
            event.then(cb.finished, inputs=[session], outputs=[chatbot, send, stop], queue=False, **private)
        example_event = (
            chatbot.example_select(cb.example, outputs=[question], queue=False, **private)
            .then(**start_args)
            .then(**respond_args)
        )
        example_event.then(cb.finished, inputs=[session], outputs=[chatbot, send, stop], queue=False, **private)
        running.append(example_event)

        stop.click(cb.stopped, inputs=[session], outputs=[chatbot, session, send, stop], cancels=running, queue=False, **private)
        chatbot.clear(cb.new_chat, outputs=[chatbot, session, sources, others, question, send, stop], cancels=running,
                      queue=False, **private)
        new_chat.click(cb.new_chat, outputs=[chatbot, session, sources, others, question, send, stop], cancels=running,
                       queue=False, **private)
        reindex_btn.click(cb.reindex, outputs=[index_html], concurrency_limit=1, concurrency_id="reindex", **private)
        app.load(cb.refresh, outputs=[index_html, model], **private)
        gr.api(cb.ask, api_name="ask", concurrency_id="assistant", concurrency_limit=limit)
    app.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_MAX_SIZE)
    return app


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


def serve(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    share: bool = False,
    announce: Callable[[str], None] = logger.info,
) -> None:
    """Launch the app (blocking) on settings.ui host/port, loopback by default; never shared unless asked.

    `announce` is given the startup lines naming the index and the model (logged by default; `rag serve` echoes them
    to stderr, visible at any log level like Gradio's own "Running on" line)."""
    from rag.answer import Assistant

    assistant = Assistant(settings)
    from rag.store import Store

    announce(f"index: {Store.for_settings(settings).location} (collection {settings.collection!r})")
    announce(describe_model(assistant, settings))
    background = Background()
    warm_up(assistant, background)
    app = build_app(settings, assistant, background)
    host = host or settings.ui.host
    port = port or settings.ui.port
    logger.info("serving on http://%s:%d", host, port)
    try:
        app.launch(server_name=host, server_port=port, share=share, inbrowser=False)
    finally:
        background.shutdown()
