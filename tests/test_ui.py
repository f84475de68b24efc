"""The web app's logic without a browser: formatting (escaped, cited, highlighted), callbacks driven by a scripted
assistant, the model pool, and the app's wiring. The browser and API tests use the real assistant."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest

from checks import assert_citations_verbatim
from rag import ui, ui_html
from rag.config import PROJECT_ROOT, Settings
from rag.errors import QuestionError
from rag.types import Answer, ChatTurn, Citation, IndexStatus, IngestSummary, Location, Passage, StreamEvent

EVIL = "<script>alert('x')</script> ${alert(1)} {{value}}"
NOT_IN_CORPUS = "The corpus does not contain an answer to this question."
CORPUS = PROJECT_ROOT / "corpus"
# The scripted answers cite real places of the bundled corpus, with quotes found there word for word.
SPARSE_AT = Location(source="001_0b21518f7ee75860.txt", line=13)
EXAONE_AT = Location(source="000_984080258767f917.txt", line=2)


def passage(rank: int, paper_id: str, text: str, title: str | None = None, **kw) -> Passage:
    return Passage(
        rank=rank,
        score=0.03 - rank / 1000,
        chunk_id=f"{paper_id}:0",
        paper_id=paper_id,
        title=title,
        label=title or " ".join(text.split()[:8]) + "…",
        source=kw.pop("source", "001_x.txt"),
        line=kw.pop("line", rank * 10),
        date=kw.pop("date", "Oct 10, 2023"),
        text=text,
        chunk_text=text,
        similarity=0.6,
        **kw,
    )


SPARSE = (
    "We consider sparse finetuning of LLMs. For MPT text generation, we show that sparse finetuning can reach "
    "75% sparsity without accuracy drops. " + EVIL
)
PASSAGES = [
    passage(1, "sparse", SPARSE, title="Sparse Fine-tuning <b>for</b> LLMs", source=SPARSE_AT.source, line=SPARSE_AT.line,
            locations=[SPARSE_AT, Location(source="002_y.txt", line=4)]),
    passage(2, "exaone", "We introduce EXAONE 3.0, an instruction-tuned language model <img src=x onerror=alert(2)>.",
            source=EXAONE_AT.source, line=EXAONE_AT.line),
]


def answer_for(question: str, history: list[ChatTurn]) -> Answer:
    if "moon" in question:
        return Answer(question=question, standalone_question=question, answer=NOT_IN_CORPUS, abstained=True, passages=PASSAGES)
    standalone = f"{question} (sparse finetuning)" if history else question
    return Answer(
        question=question,
        standalone_question=standalone,
        answer=f"Sparse finetuning reaches 75% sparsity [1]. It also {EVIL} flies.",
        abstained=False,
        citations=[Citation(n=1, source=SPARSE_AT.source, line=SPARSE_AT.line, paper_id="sparse", title="Sparse",
                            quote="sparse finetuning can reach 75% sparsity without accuracy drops", score=0.83)],
        passages=PASSAGES,
        unsupported=[f"It also {EVIL} flies."],
    )


class ScriptedAssistant:
    """Speaks the Assistant contract: query, passages, tokens, done. Records every call and every closed stream."""

    def __init__(self, fail: Exception | None = None):
        self.calls: list[tuple[str, list[ChatTurn], dict]] = []
        self.closed = 0
        self.fail = fail
        self.retriever = types.SimpleNamespace(invalidated=0)
        self.retriever.invalidate = lambda: setattr(self.retriever, "invalidated", self.retriever.invalidated + 1)
        self.prefetched = threading.Event()

    def prefetch_sentences(self, stop=None) -> None:
        self.prefetched.set()

    def ask(self, question, history=(), k=None, temperature=None, max_tokens=None) -> Answer:
        self.calls.append((question, list(history), {"k": k}))
        if self.fail:
            raise self.fail
        return answer_for(question, list(history))

    def stream(self, question, history=(), k=None, temperature=None, max_tokens=None) -> Iterator[StreamEvent]:
        self.calls.append((question, list(history), {"k": k, "temperature": temperature, "max_tokens": max_tokens}))
        if self.fail:
            raise self.fail
        answer = answer_for(question, list(history))
        try:
            yield StreamEvent(kind="query", text=answer.standalone_question)
            yield StreamEvent(kind="passages", passages=answer.passages)
            for word in answer.answer.split(" "):
                yield StreamEvent(kind="token", text=word + " ")
            yield StreamEvent(kind="done", answer=answer)
        finally:
            self.closed += 1


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-test.gguf").write_bytes(b"GGUF" + b"\0" * 32)
    return Settings(data_dir=tmp_path / "data", models_dir=models)


@pytest.fixture
def assistant() -> ScriptedAssistant:
    return ScriptedAssistant()


@pytest.fixture
def callbacks(settings: Settings, assistant: ScriptedAssistant) -> ui.ChatCallbacks:
    return ui.ChatCallbacks(settings, ui.AssistantPool(settings, assistant))


def no_raw_markup(rendered: str) -> None:
    """Nothing from the corpus or the model reaches the page as markup or template syntax."""
    assert "<script" not in rendered and "<img" not in rendered and "<b>" not in rendered
    assert "${" not in rendered and "{{" not in rendered


def ask(cb: ui.ChatCallbacks, session: ui.ChatSession, question: str, **opts) -> list[tuple]:
    """Run start + respond as the app does; return every respond yield."""
    _, _, session, pending, *_ = cb.start(question, session)
    return list(cb.respond(pending, session, opts.get("k", 5), opts.get("model"), 0.0, 128))


# ------------------------------------------------------------------------------------------ formatting


@pytest.mark.parametrize("question, history", [("How sparse?", []), ("And its speedups?", [ChatTurn(role="user", content="x")]),
                                               ("Who went to the moon?", [])])
def test_scripted_answers_quote_the_corpus_verbatim(question, history):
    answer = answer_for(question, history)
    assert_citations_verbatim(answer, CORPUS)
    assert_citations_verbatim(answer.model_dump(mode="json"), CORPUS)


def test_html_module_does_not_import_gradio():
    code = "import sys, rag.ui_html; assert 'gradio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_esc_escapes_markup_and_template_syntax():
    out = ui_html.esc(EVIL + "\nnext")
    no_raw_markup(out)
    assert "&lt;script&gt;" in out and "<br>" in out


def test_highlight_marks_the_quote_across_whitespace():
    out = ui_html.highlight("First sentence.  The   key result\nholds. Last <one>.", "The key result holds.")
    assert "<mark>The   key result<br>holds.</mark>" in out
    assert "&lt;one&gt;" in out


def test_highlight_marks_each_sentence_of_a_split_quote():
    text = "Alpha is one. Beta is two. Gamma is three."
    out = ui_html.highlight(text, "Alpha is one. Gamma is three.")
    assert out.count("<mark>") == 2 and "<mark>Beta" not in out


def test_highlight_shows_a_quote_not_in_the_text_above_it():
    out = ui_html.highlight("Some abstract.", "A <b>quote</b> from elsewhere.")
    assert out.startswith('<blockquote class="rag-quote"><mark>A &lt;b&gt;quote')
    no_raw_markup(out)


def test_excerpt_shows_the_quote_with_one_sentence_either_side():
    text = "One. Two. Three is <key>. Four. Five."
    out = ui_html.highlight_excerpt(text, "Three is <key>.")
    assert out == "… Two. <mark>Three is &lt;key&gt;.</mark> Four. …"
    assert ui_html.highlight_excerpt(text, "Not there.") is None
    assert ui_html.highlight_excerpt("Only <one>.", "Only <one>.") == "<mark>Only &lt;one&gt;.</mark>"


def test_sentences_left_out_of_the_answer_are_listed_as_unsupported():
    answer = answer_for("How sparse?", []).model_copy(
        update={"answer": "Sparse finetuning reaches 75% sparsity [1].", "unsupported": ["The moon is <b>cheese</b>."]}
    )
    out = ui_html.render_answer(answer)
    assert "1 sentence left out" in out and '<span class="rag-unsupported">The moon is &lt;b&gt;cheese' in out
    assert "Dotted" not in out  # nothing unsupported inside the answer text itself
    no_raw_markup(out)


def test_answer_has_markers_unsupported_marks_and_no_markup():
    out = ui_html.render_answer(answer_for("How sparse?", []))
    assert re.search(r'<sup class="rag-cite" title="Sparse Fine-tuning &lt;b&gt;for&lt;/b&gt; LLMs">\[1\]</sup>', out)
    assert '<span class="rag-unsupported"' in out and "flies." in out
    assert "Searched for" not in out  # not rewritten
    no_raw_markup(out)


def test_rewritten_query_is_shown():
    out = ui_html.render_answer(answer_for("And its speedups?", [ChatTurn(role="user", content="x")]))
    assert "Searched for" in out and "And its speedups? (sparse finetuning)" in out


def test_abstention_is_shown_as_such_with_the_nearest_passages():
    answer = answer_for("Who went to the moon?", [])
    out = ui_html.render_answer(answer)
    assert "Not in the corpus" in out and NOT_IN_CORPUS in out and "2 nearest passages" in out
    panel = ui_html.render_sources(answer)
    assert "Nearest passages" in panel and panel.count('class="rag-card"') == 2
    no_raw_markup(panel)


def test_sources_panel_shows_each_cited_paper_with_its_quote():
    panel = ui_html.render_sources(answer_for("How sparse?", []))
    assert panel.count("rag-card rag-cited") == 1
    assert "Sparse Fine-tuning &lt;b&gt;for&lt;/b&gt; LLMs" in panel
    assert "001_0b21518f7ee75860.txt:13" in panel and "+1 more" in panel and "Oct 10, 2023" in panel and "support 0.83" in panel
    assert "<mark>sparse finetuning can reach 75% sparsity without accuracy drops</mark>" in panel
    no_raw_markup(panel)


def test_untitled_paper_shows_its_first_words():
    untitled = Answer(question="q", standalone_question="q", answer="EXAONE is open [1].", abstained=False,
                      citations=[Citation(n=1, source=EXAONE_AT.source, line=EXAONE_AT.line, paper_id="exaone",
                                          quote="We introduce EXAONE 3.0", score=0.7)], passages=PASSAGES)
    assert_citations_verbatim(untitled, CORPUS)
    panel = ui_html.render_sources(untitled)
    assert "We introduce EXAONE 3.0, an instruction-tuned language model" in panel and "(untitled)" in panel
    no_raw_markup(panel)


def test_other_passages_are_the_uncited_ones():
    out = ui_html.render_other_passages(answer_for("How sparse?", []))
    assert "EXAONE" in out and "Sparse Fine-tuning" not in out
    no_raw_markup(out)


def test_index_status_and_missing_index():
    status = IndexStatus(papers=150, chunks=291, embedder="all-MiniLM-L6-v2", chunking="v1", fingerprint="abc",
                         last_ingest="2025-01-01T00:00:00+00:00")
    out = ui_html.render_index_status(status)
    assert "150" in out and "291" in out and "all-MiniLM-L6-v2" in out and "2025-01-01" in out
    assert "run `rag ingest` first" in ui_html.render_index_status(None, "no index at X: run `rag ingest` first")


# ------------------------------------------------------------------------------------------ callbacks


def test_start_moves_the_question_into_the_chat(callbacks):
    box, messages, session, pending, send, stop = callbacks.start("  How sparse? ", ui.ChatSession())
    assert box == "" and pending == "How sparse?" and session.streaming
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert send["visible"] is False and stop["visible"] is True


def test_blank_question_does_nothing(callbacks):
    session = ui.ChatSession()
    _, messages, session, pending, *_ = callbacks.start("   ", session)
    assert messages == [] and pending == "" and not session.streaming
    assert list(callbacks.respond(pending, session, 5, None, 0.0, 128))[-1][0] == []


def test_answer_streams_then_is_replaced_by_the_checked_answer(callbacks, assistant):
    session = ui.ChatSession()
    steps = ask(callbacks, session, "How sparse?", k=7)
    bubbles = [step[0][-1]["content"] for step in steps]
    assert any("rag-streaming" in b and "Sparse finetuning" in b for b in bubbles[:-1])  # tokens streamed
    assert "rag-retrieving" in steps[1][2]  # the sources panel lists what was retrieved while writing
    final = steps[-1]
    assert "rag-cite" in final[0][-1]["content"] and "rag-streaming" not in final[0][-1]["content"]
    assert "rag-cited" in final[2] and "EXAONE" in final[3]
    assert not session.streaming and session.answer is not None
    assert_citations_verbatim(session.answer, CORPUS)
    assert [t.role for t in session.turns] == ["user", "assistant"]
    assert assistant.calls[0][2]["k"] == 7 and assistant.closed == 1


def test_follow_up_sends_the_history_and_shows_the_rewritten_query(callbacks, assistant):
    session = ui.ChatSession()
    ask(callbacks, session, "How sparse?")
    steps = ask(callbacks, session, "And speedups?")
    question, history, _ = assistant.calls[-1]
    assert question == "And speedups?" and [t.content for t in history][0] == "How sparse?"
    assert "Searched for" in steps[-1][0][-1]["content"]
    assert len(session.messages) == 4 and len(session.turns) == 4


def test_stop_keeps_the_partial_answer_out_of_the_history_and_closes_the_stream(callbacks, assistant):
    session = ui.ChatSession()
    _, _, session, pending, *_ = callbacks.start("How sparse?", session)
    stream = callbacks.respond(pending, session, 5, None, 0.0, 128)
    for _ in range(4):
        next(stream)
    messages, session, send, stop = callbacks.stopped(session)
    assert "Stopped." in messages[-1]["content"] and "rag-cursor" not in messages[-1]["content"]
    assert send["visible"] is True and stop["visible"] is False
    assert list(stream) == []  # a stream that wakes up after Stop writes nothing
    stream.close()
    assert "Stopped." in session.messages[-1]["content"] and session.turns == [] and assistant.closed == 1


def test_new_chat_clears_everything(callbacks):
    session = ui.ChatSession()
    ask(callbacks, session, "How sparse?")
    messages, fresh, sources, others, box, *_ = callbacks.new_chat()
    assert messages == [] and fresh.turns == [] and "Ask a question" in sources and box == ""


def test_question_error_is_shown_in_the_chat_and_raised_as_gr_error(settings):
    failing = ScriptedAssistant(fail=QuestionError("the question is too long: 5000 characters, at most 2000"))
    cb = ui.ChatCallbacks(settings, ui.AssistantPool(settings, failing))
    session = ui.ChatSession()
    _, _, session, pending, *_ = cb.start("x" * 5000, session)
    stream = cb.respond(pending, session, 5, None, 0.0, 128)
    shown = next(stream)
    assert "too long" in shown[0][-1]["content"] and "rag-error" in shown[0][-1]["content"]
    with pytest.raises(gr.Error, match="too long"):
        next(stream)
    assert not session.streaming and session.turns == []


def test_an_unexpected_failure_does_not_leave_the_tab_stuck(settings):
    cb = ui.ChatCallbacks(settings, ui.AssistantPool(settings, ScriptedAssistant(fail=RuntimeError("llama exploded"))))
    session = ui.ChatSession()
    _, _, session, pending, *_ = cb.start("How sparse?", session)
    with pytest.raises(gr.Error, match="unexpected error"):
        list(cb.respond(pending, session, 5, None, 0.0, 128))
    assert not session.streaming and "rag-error" in session.messages[-1]["content"]
    assert cb.start("Again?", session)[3] == "Again?"  # the next question is accepted


def test_api_ask_returns_the_answer_json(callbacks, assistant):
    out = callbacks.ask("How sparse?", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], k=3)
    assert json.loads(json.dumps(out))["citations"][0]["n"] == 1
    assert_citations_verbatim(out, CORPUS)
    assert assistant.calls[-1][1][0] == ChatTurn(role="user", content="hi") and assistant.calls[-1][2]["k"] == 3
    with pytest.raises(gr.Error, match="bad history"):
        callbacks.ask("q", [{"role": "system", "content": "x"}])


def test_reindex_ingests_and_invalidates_the_retrievers(callbacks, assistant, monkeypatch):
    seen = {}

    def fake_ingest(settings, progress=False, **kw):
        seen["progress"] = progress
        return IngestSummary(records=3, duplicates=0, papers=3, chunks_added=3, chunks_unchanged=0, chunks_removed=0, seconds=0.1)

    monkeypatch.setattr("rag.ingest.ingest", fake_ingest)
    out = callbacks.reindex(progress=lambda *a, **k: None)
    assert seen["progress"] is True and assistant.retriever.invalidated == 1
    assert assistant.prefetched.wait(10)  # the re-indexed papers' sentence vectors are embedded and saved
    assert "No usable index" in out  # the fake ingest wrote nothing


# --------------------------------------------------------------------------------------------- models


def test_model_choices_list_the_default_and_every_gguf(settings, assistant):
    pool = ui.AssistantPool(settings, assistant)
    names = [name for _, name in pool.choices()]
    assert names[0] == pool.default_name and "tiny-test.gguf" in names
    assert pool.get(None) is assistant and pool.get(pool.default_name) is assistant


def test_choosing_a_model_reaches_a_separate_assistant(settings, assistant, monkeypatch):
    made = []

    class Recording:
        def __init__(self, settings, retriever=None, llm=None):
            self.settings, self.retriever = settings, retriever
            made.append(self)

    monkeypatch.setitem(sys.modules, "rag.answer", types.SimpleNamespace(Assistant=Recording))
    pool = ui.AssistantPool(settings, assistant)
    pool.choices()
    other = pool.get("tiny-test.gguf")
    assert other is pool.get("tiny-test.gguf") and len(made) == 1  # one per model, reused
    assert Path(other.settings.model).name == "tiny-test.gguf" and settings.model is None  # a copy, not a mutation
    assert other.retriever is assistant.retriever  # one shared index
    with pytest.raises(Exception, match="unknown model"):
        pool.get("nope.gguf")


# ------------------------------------------------------------------------------------------------ app


def test_build_app_wires_a_single_public_api_and_no_external_assets(settings, assistant):
    app = ui.build_app(settings, assistant)
    assert isinstance(app, gr.Blocks) and app.analytics_enabled is False
    public = [fn.api_name for fn in app.fns.values() if fn.api_visibility == "public"]
    assert public == ["ask"]
    options = ui.launch_options()
    assert options["share"] is False and options["run_history"] is False
    theme_css = options["theme"]._get_theme_css()
    assert "googleapis" not in theme_css and "@import" not in theme_css and "url(http" not in theme_css
    css = ui.CSS_PATH.read_text()
    assert "url(" not in css and "@import" not in css
