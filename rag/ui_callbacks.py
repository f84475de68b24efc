"""The web app's callbacks: one browser tab's chat (ChatSession) and every callback the page wires up
(ChatCallbacks): each calls the Assistant (or the index) and formats what it returns with rag.ui_html, which
HTML-escapes every piece of corpus or model text before it reaches the page. They hold no pipeline logic.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check

import gradio as gr  # noqa: E402

from rag.assistant_pool import prefetch_in_background  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.errors import RagError  # noqa: E402
from rag.types import Answer, ChatTurn  # noqa: E402
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
    from rag.assistant_pool import AssistantPool

logger = logging.getLogger(__name__)


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
