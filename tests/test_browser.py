"""The web app in a real headless Chromium (Debian's /usr/bin/chromium), with the real assistant, model and index.

Each test drives the page as a user would: type, send, watch tokens stream, read the sources panel, stop, start
a new chat, re-index. Every request the page makes is recorded; none may leave the app's own host.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from rag.config import PROJECT_ROOT, Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
NETGUARD = Path(__file__).parent / "netguard"  # refuses and records any connection that leaves the machine
ANSWER_TIMEOUT_MS = 90_000



def _missing() -> str | None:
    """What the browser tests lack here, if anything."""
    if importlib.util.find_spec("playwright") is None:
        return "the Playwright package is not installed (make install installs the dev extras)"
    if not CHROMIUM.exists():
        return f"Debian's chromium is not at {CHROMIUM}: install it with `make browser` (apt-get install chromium)"
    return None


MISSING = _missing()
IN_CI = bool(os.environ.get("CI"))

pytestmark = [
    pytest.mark.browser,
    pytest.mark.llm,
    pytest.mark.skipif(MISSING is not None and not IN_CI, reason=f"no browser: {MISSING}"),
]


@pytest.fixture(scope="session", autouse=True)
def _browser_required_in_ci() -> None:
    """In CI a missing browser is a failure, not a skip: the browser tests must run there."""
    if MISSING is not None:
        pytest.fail(f"CI must run the browser tests, but {MISSING}", pytrace=False)

EVIL_TITLE = "Zebra crossings <script>window.__pwned = 1</script>"
EVIL_ABSTRACT = (
    "We present ZebraNet, a detector of zebra crossings for dashboard cameras <img src=x onerror=\"window.__pwned = 2\">. "
    "ZebraNet reaches 91% accuracy on the <b>ZebraBench</b> test set. ${window.__pwned = 3} "
    "{{constructor.constructor('window.__pwned = 4')()}}"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(settings: Settings, assistant) -> Iterator[str]:
    from rag.ui import build_app

    app = build_app(settings, assistant)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture(scope="module")
def app_url(ingested_settings: Settings, retriever) -> Iterator[str]:
    """The app over the bundled corpus (ingested once per test session)."""
    from rag.answer import Assistant

    yield from launch(ingested_settings, Assistant(ingested_settings, retriever=retriever))


class PacedModel:
    """The real default model, each generated piece held back a little: a laptop running a larger model.

    Stopping needs an answer that is still being written when Stop is clicked; the default model often
    finishes a short answer within a second of its first token, which made a Stop test a race."""

    def __init__(self, llm, seconds_per_piece: float):
        self._llm = llm
        self._pause = seconds_per_piece

    def __getattr__(self, name: str):
        return getattr(self._llm, name)

    def stream_chat(self, messages, *, max_tokens: int, temperature: float = 0.0):
        stream = self._llm.stream_chat(messages, max_tokens=max_tokens, temperature=temperature)
        try:
            for event in stream:
                if not event.done:
                    time.sleep(self._pause)
                yield event
        finally:
            stream.close()  # Stop closes us: free the model lock at once


@pytest.fixture(scope="module")
def paced_app_url(ingested_settings: Settings, retriever) -> Iterator[str]:
    """The app over the bundled corpus with the real model paced to ~4 pieces a second."""
    from rag.answer import Assistant
    from rag.llm import LocalLLM

    llm = PacedModel(LocalLLM(ingested_settings), seconds_per_piece=0.25)
    yield from launch(ingested_settings, Assistant(ingested_settings, retriever=retriever, llm=llm))


@pytest.fixture(scope="module")
def small_app_url(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[str]:
    """An app over a tiny corpus of its own: one abstract full of markup, plus the test sample (safe to re-index)."""
    from rag.answer import Assistant
    from rag.ingest import ingest
    from rag.retrieval import Retriever

    root = tmp_path_factory.mktemp("small")
    evil = root / "evil.jsonl"
    evil.write_text(json.dumps({"title": EVIL_TITLE, "abstract": EVIL_ABSTRACT, "date": "Jan 1, 2024"}) + "\n")
    sample = Path(__file__).parent / "data" / "sample.jsonl"
    settings = Settings(data_dir=root / "data", corpus_paths=[evil, sample])
    ingest(settings, embedder=embedder)
    yield from launch(settings, Assistant(settings, retriever=Retriever(settings, embedder=embedder)))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh tab that records the host of every request it makes."""
    context = browser.new_context(viewport={"width": 1400, "height": 950})
    page = context.new_page()
    page.requested = []  # type: ignore[attr-defined]
    page.on("request", lambda request: page.requested.append(request.url))  # type: ignore[attr-defined]
    yield page
    context.close()


def open_app(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#rag-question textarea")
    page.wait_for_selector("#rag-sources .rag-panel-title")


def ask(page, question: str) -> None:
    page.fill("#rag-question textarea", question)
    page.keyboard.press("Enter")


def last_bot(page):
    return page.locator("#rag-chat [data-testid='bot']").last


def wait_for_answer(page, n: int) -> str:
    """Wait until the n-th answer is final (no cursor, not 'searching'); return its text."""
    page.wait_for_function(
        """n => {
            const bots = document.querySelectorAll("#rag-chat [data-testid='bot']");
            if (bots.length < n) return false;
            const last = bots[n - 1];
            return !last.querySelector('.rag-streaming') && last.querySelector('.rag-answer, .rag-error');
        }""",
        arg=n,
        timeout=ANSWER_TIMEOUT_MS,
    )
    return last_bot(page).inner_text()


def hosts(urls: list[str]) -> set[str]:
    return {urlparse(u).hostname or u.split(":", 1)[0] for u in urls}


def test_chat_streams_cites_and_follows_up(page, app_url: str, tmp_path: Path):
    open_app(page, app_url)
    ask(page, "What sparsity level can sparse finetuning reach for MPT text generation without an accuracy drop?")
    page.wait_for_selector("#rag-chat .rag-cursor", timeout=ANSWER_TIMEOUT_MS)  # tokens arriving, cursor blinking
    assert page.is_visible("#rag-stop")
    first = wait_for_answer(page, 1)
    assert first.strip()
    page.screenshot(path=str(tmp_path / "answer.png"))

    bubble = last_bot(page)
    assert bubble.locator(".rag-abstained").count() == 0, f"the answer is in the corpus, yet: {first!r}"
    markers = {int(m) for m in re.findall(r"\[(\d+)\]", bubble.locator(".rag-answer").inner_text())}
    cards = page.locator("#rag-sources .rag-cited")
    assert markers, f"expected an [n] citation in: {first!r}"
    assert {int(cards.nth(i).get_attribute("data-n")) for i in range(cards.count())} == markers
    card = cards.first
    assert "001_0b21518f7ee75860.txt:13" in page.inner_text("#rag-sources")  # the sparse finetuning abstract
    assert re.search(r"\d{3}_[0-9a-f]{16}\.txt:\d+", card.locator(".rag-meta").inner_text())
    assert card.locator(".rag-abstract mark").count() >= 1
    assert "support" in card.locator(".rag-meta").inner_text()
    assert page.is_visible("#rag-send") and not page.is_visible("#rag-stop")

    ask(page, "And what speedups does it give?")
    wait_for_answer(page, 2)
    assert page.locator("#rag-chat [data-testid='user']").count() == 2
    query = last_bot(page).locator(".rag-query")
    assert query.count() == 1, "the follow-up should show the rewritten standalone query"
    assert "And what speedups does it give?" != query.inner_text().replace("Searched for", "").strip()

    page.click("#rag-new")
    page.wait_for_function("() => !document.querySelector(\"#rag-chat [data-testid='bot']\")")
    assert "Ask a question" in page.inner_text("#rag-sources")
    assert hosts(page.requested) <= LOCAL_HOSTS, sorted(set(page.requested))


def test_off_topic_question_is_shown_as_not_in_the_corpus(page, app_url: str):
    open_app(page, app_url)
    ask(page, "What oven temperature and proofing time work best for baking sourdough bread?")
    wait_for_answer(page, 1)
    bubble = last_bot(page)
    assert bubble.locator(".rag-abstained").count() == 1, bubble.inner_text()
    assert page.locator("#rag-sources .rag-cited").count() == 0
    assert page.locator("#rag-sources .rag-card").count() >= 1  # the nearest passages are shown


def test_page_requests_nothing_but_its_own_host(page, app_url: str):
    open_app(page, app_url)
    page.click("#rag-chat button:has-text('EXAONE')")  # an example question
    wait_for_answer(page, 1)
    page.click("#rag-others-acc .label-wrap")
    page.click("#rag-settings .label-wrap")
    page.wait_for_selector("#rag-index-status table")
    page.click("text=Use via API")  # the API docs page
    page.wait_for_selector("text=/ask")
    page.wait_for_timeout(500)
    assert page.requested, "no request was recorded"
    assert hosts(page.requested) <= LOCAL_HOSTS, sorted(u for u in set(page.requested) if urlparse(u).hostname not in LOCAL_HOSTS)


def set_max_tokens(page, value: int) -> None:
    box = page.locator("#rag-settings input[aria-label='number input for Max answer tokens']")
    box.fill(str(value))
    box.press("Enter")


def test_stop_ends_a_long_answer(page, paced_app_url: str):
    open_app(page, paced_app_url)
    page.click("#rag-settings .label-wrap")
    set_max_tokens(page, 1024)
    ask(page, "Summarise in detail everything the corpus says about evaluating large language models.")
    page.wait_for_selector("#rag-chat .rag-cursor", timeout=ANSWER_TIMEOUT_MS)  # text is being written
    page.click("#rag-stop")
    page.wait_for_selector("#rag-chat .rag-stopped", timeout=10_000)
    assert page.is_visible("#rag-send") and not page.is_visible("#rag-stop")
    set_max_tokens(page, 16)
    ask(page, "How many TPU v4 chips were used to train PaLM?")  # the model is free again
    wait_for_answer(page, 2)
    assert page.locator("#rag-chat .rag-stopped").count() == 1


def test_two_tabs_answer_at_once_without_mixing(browser, app_url: str):
    questions = {
        "exaone": "In which parameter sizes were the EXAONE 3.5 instruction-tuned language models released?",
        "text4vpr": "What top-1 localization accuracy does Text4VPR achieve within a 5-meter radius?",
    }
    contexts = [browser.new_context(viewport={"width": 1200, "height": 900}) for _ in questions]
    try:
        pages = [c.new_page() for c in contexts]
        for page in pages:
            open_app(page, app_url)
        for page, question in zip(pages, questions.values()):
            ask(page, question)
        for page, (topic, question) in zip(pages, questions.items()):
            wait_for_answer(page, 1)
            assert page.locator("#rag-chat [data-testid='user']").inner_text().strip() == question
            assert last_bot(page).locator(".rag-abstained").count() == 0, last_bot(page).inner_text()
            assert page.locator("#rag-sources .rag-cited").count() >= 1
            other = next(t for t in questions if t != topic)
            page.click("#rag-others-acc .label-wrap")
            panel = (page.inner_text("#rag-sources") + page.inner_text("#rag-others")).lower()
            assert topic in panel.replace(" ", ""), f"{topic} tab shows sources of another question"
            assert page.locator("#rag-chat [data-testid='bot']").count() == 1
            assert other not in last_bot(page).inner_text().lower().replace(" ", "")
    finally:
        for c in contexts:
            c.close()


def test_markup_in_the_corpus_is_shown_as_text_never_run(page, small_app_url: str):
    open_app(page, small_app_url)
    ask(page, "What accuracy does ZebraNet reach on ZebraBench?")
    wait_for_answer(page, 1)
    page.click("#rag-others-acc .label-wrap")
    shown = page.inner_text("#rag-sources") + page.inner_text("#rag-others")
    assert "<script>window.__pwned = 1</script>" in shown and "<img src=x" in shown
    assert "${window.__pwned = 3}" in shown
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("#rag-sources script, #rag-others script, #rag-chat script, #rag-sources img").count() == 0


def test_reindex_shows_progress_and_status(page, small_app_url: str):
    open_app(page, small_app_url)
    page.click("#rag-settings .label-wrap")
    page.wait_for_selector("#rag-index-status table")
    status = page.inner_text("#rag-index-status")
    assert re.search(r"Papers\s+\d+", status) and "Embedder" in status
    page.click("#rag-reindex")
    page.wait_for_selector("text=/Indexed \\d+ papers/", timeout=60_000)
    assert "Last ingest" in page.inner_text("#rag-index-status")


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app.py exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"app.py did not listen on {port} within {timeout}s")


@pytest.mark.skipif(not NETGUARD.exists(), reason="needs tests/netguard (the offline guard)")
def test_served_app_indexes_and_answers_connecting_nowhere(page, tmp_path: Path):
    """`python app.py` as a user runs it, on an empty data dir, with every outbound connection and name lookup
    refused and recorded: the page says there is no index, Re-index builds it, then a question is answered."""
    log, port = tmp_path / "net.log", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "ANONYMIZED_", "GRADIO_"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(NETGUARD), env.get("PYTHONPATH", "")])),
        RAG_NETGUARD_LOG=str(log),
        RAG_DATA_DIR=str(tmp_path / "data"),
        RAG_CORPUS_PATHS=json.dumps([str(PROJECT_ROOT / "corpus" / "000_984080258767f917.txt")]),  # 4 abstracts: fast
        RAG_UI__PORT=str(port),
        HOME=str(tmp_path / "home"),
    )
    with open(tmp_path / "app.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        open_app(page, f"http://127.0.0.1:{port}/")
        page.click("#rag-settings .label-wrap")
        page.wait_for_selector("#rag-index-status .rag-index-missing")
        page.click("#rag-reindex")
        page.wait_for_selector("#rag-index-status table", timeout=120_000)
        ask(page, "In which parameter sizes were the EXAONE 3.5 instruction-tuned language models released?")
        answer = wait_for_answer(page, 1)
        assert last_bot(page).locator(".rag-abstained").count() == 0, answer
        assert page.locator("#rag-sources .rag-cited").count() >= 1, answer
        assert "000_984080258767f917.txt:1" in page.inner_text("#rag-sources"), answer
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert hosts(page.requested) <= LOCAL_HOSTS, sorted(set(page.requested))
    assert not log.exists() or log.read_text() == "", log.read_text()
