"""The served deployment: a real Chroma server and a real llama.cpp server, shared by two `rag serve` processes,
all started here on 127.0.0.1 with free ports and stopped after. Answers come concurrently from both apps; a server
that dies gives the chat a clear error message, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from checks import assert_citations_verbatim  # noqa: E402
from test_chroma_server import ChromaServer  # noqa: E402
from test_hardening import Server  # noqa: E402
from test_llm_server import ModelServer  # noqa: E402

from rag.config import PROJECT_ROOT, LLMSettings, Settings, StoreSettings  # noqa: E402

pytestmark = pytest.mark.llm

CORPUS = PROJECT_ROOT / "corpus"
QUESTIONS = [
    "Which sizes are the EXAONE 3.5 models offered in?",
    "How many expert-level multiple-choice questions does the KMMLU Korean benchmark contain?",
    "What sparsity level can sparse finetuning reach for MPT text generation without an accuracy drop?",
    "How does Text4VPR match text descriptions to images for place recognition?",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChromaServer, ModelServer, dict[str, str]]]:
    root = tmp_path_factory.mktemp("stack")
    chroma = ChromaServer(root / "chroma")
    model = ModelServer(root / "model.log")
    model.start()
    env = {**os.environ, "RAG_STORE__URL": chroma.url, "RAG_LLM__URL": model.url, "RAG_DATA_DIR": str(root / "data")}
    try:
        ingest = subprocess.run([sys.executable, "-m", "rag", "ingest", "--json"], env=env, capture_output=True,
                                text=True, timeout=600)
        assert ingest.returncode == 0, ingest.stderr
        yield chroma, model, env
    finally:
        model.stop()
        chroma.stop()


def test_two_app_processes_share_both_servers_and_answer_concurrently(stack, tmp_path: Path):
    chroma, model, env = stack
    apps = [Server(env, tmp_path / f"app{i}.log") for i in range(2)]
    try:
        for app in apps:
            log = app.log.read_text()
            assert f"index: Chroma server {chroma.url}" in log and f"on the model server {model.url}" in log
        jobs = [(app, question) for question in QUESTIONS for app in apps]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda job: job[0].client().predict(job[1], [], None, api_name="/ask"), jobs))
        for answer in answers:
            assert not answer["abstained"] and answer["citations"], answer["answer"]
            assert answer["model"]["sha256"] is None
            assert_citations_verbatim(answer, CORPUS)
        for app in apps:
            assert "Traceback" not in app.log.read_text()
    finally:
        for app in apps:
            app.stop()


def _chat(settings: Settings, question: str) -> tuple[list, BaseException | None]:
    """One question through the web app's chat callbacks (as the page sends it); the messages and the error raised."""
    from rag.ui import AssistantPool, ChatCallbacks, ChatSession

    callbacks = ChatCallbacks(settings, AssistantPool(settings))
    session = ChatSession()
    _, _, session, pending, _, _ = callbacks.start(question, session)
    error = None
    try:
        for _ in callbacks.respond(pending, session, None, None, None, None):
            pass
    except Exception as e:  # noqa: BLE001 - gr.Error is the expected way out
        error = e
    return session.messages, error


def test_a_server_that_dies_is_an_error_message_in_the_chat(stack, tmp_path: Path):
    import gradio as gr

    chroma, model, env = stack
    settings = Settings(data_dir=Path(env["RAG_DATA_DIR"]), store=StoreSettings(url=chroma.url),
                        llm=LLMSettings(url=model.url))
    messages, error = _chat(settings, QUESTIONS[0])
    assert error is None and "rag-error" not in messages[-1]["content"]

    model.kill()
    try:
        messages, error = _chat(settings, QUESTIONS[1])
        assert isinstance(error, gr.Error) and model.url.rsplit("/v1", 1)[0] in str(error)
        assert "Could not answer" in messages[-1]["content"] or model.url.rsplit("/v1", 1)[0] in messages[-1]["content"]
    finally:
        model.start()

    doomed = ChromaServer(tmp_path / "doomed")
    try:
        doomed_env = {**env, "RAG_STORE__URL": doomed.url}
        ingest = subprocess.run([sys.executable, "-m", "rag", "ingest", str(PROJECT_ROOT / "tests" / "data" / "sample.jsonl")],
                                env=doomed_env, capture_output=True, text=True, timeout=600)
        assert ingest.returncode == 0, ingest.stderr
        on_doomed = settings.model_copy(update={"store": StoreSettings(url=doomed.url)})
    finally:
        doomed.stop()
    messages, error = _chat(on_doomed, "What does speculative decoding need?")
    assert isinstance(error, gr.Error) and doomed.url in str(error)
    assert doomed.url in json.dumps(messages[-1])
