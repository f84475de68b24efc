"""The web app: a Gradio chat over the corpus, with a sources panel, settings, index status and an /ask API.

`build_app()` returns the app without launching it (tests drive it); `serve()` launches it on loopback.
The callbacks live in rag.ui_callbacks (they call the Assistant and format what it returns with rag.ui_html, which
HTML-escapes every piece of corpus or model text before it reaches the page); the assistants, their warm-up and
background prefetch in rag.assistant_pool. The page loads nothing from any host but the app's own (system fonts,
analytics off, no share link unless asked).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check

import gradio as gr  # noqa: E402

from starlette.middleware import Middleware  # noqa: E402

from rag.assistant_pool import (  # noqa: E402 - the names tests and callers import from rag.ui are re-exported
    CONCURRENCY_LIMIT,
    SERVER_CONCURRENCY_LIMIT,  # noqa: F401 - re-exported
    AssistantPool,
    Background,
    assistant_concurrency,
    describe_model,
    prefetch_in_background,  # noqa: F401 - re-exported
    warm_up,
)
from rag.config import Settings  # noqa: E402
from rag.ui_callbacks import ChatCallbacks, ChatSession  # noqa: E402
from rag.ui_html import esc, render_other_passages, render_sources  # noqa: E402
from rag.web_guard import SameOriginOnly  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from rag.answer import Assistant

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CSS_PATH = STATIC_DIR / "ui.css"
TITLE = "Abstracts assistant"
QUEUE_MAX_SIZE = 64
MAX_UPLOAD_BYTES = 1024  # no component takes a file; Gradio's /upload route is refused anything bigger

#: Real questions about the bundled corpus, shown in the empty chat.
EXAMPLE_QUESTIONS: tuple[str, ...] = (
    "What sparsity level can sparse finetuning reach for MPT text generation without an accuracy drop?",
    "In which parameter sizes were the EXAONE 3.5 instruction-tuned language models released?",
    "How does Text4VPR match text descriptions to images for place recognition?",
    "How many expert-level multiple-choice questions does the KMMLU Korean benchmark contain?",
)


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
