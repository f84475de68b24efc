"""The /ask API endpoint through gradio_client, against the real app, assistant, model and index."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from checks import assert_citations_verbatim
from rag.config import PROJECT_ROOT, Settings
from rag.types import Answer

pytestmark = pytest.mark.llm

SPARSE = "What sparsity level can sparse finetuning reach for MPT text generation without an accuracy drop?"
SPARSE_SOURCE = ("001_0b21518f7ee75860.txt", 13)
CORPUS = PROJECT_ROOT / "corpus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(ingested_settings: Settings, retriever) -> Iterator:
    from gradio_client import Client

    from rag.answer import Assistant
    from rag.ui import build_app

    app = build_app(ingested_settings, Assistant(ingested_settings, retriever=retriever))
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()


def test_only_ask_is_public(client):
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/ask"]


def test_ask_returns_an_answer_whose_citations_resolve(client):
    result = client.predict(SPARSE, api_name="/ask")
    answer = Answer.model_validate(result)
    assert answer.question == SPARSE and answer.answer.strip() and answer.passages
    assert answer.passages[0].source == "001_0b21518f7ee75860.txt"
    assert not answer.abstained and answer.citations, answer.answer
    assert SPARSE_SOURCE in [(c.source, c.line) for c in answer.citations]
    by_paper = {p.paper_id: p for p in answer.passages}
    for citation in answer.citations:
        passage = by_paper[citation.paper_id]
        assert (citation.source, citation.line) == (passage.source, passage.line)
        assert f"[{citation.n}]" in answer.answer
    assert_citations_verbatim(result, CORPUS)


def test_history_and_k_reach_the_assistant(client):
    history = [{"role": "user", "content": SPARSE}, {"role": "assistant", "content": "It reaches 75% sparsity [1]."}]
    result = client.predict("And what speedups does it give?", history, 2, api_name="/ask")
    assert result["standalone_question"] != "And what speedups does it give?"
    assert 1 <= len(result["passages"]) <= 2
    assert_citations_verbatim(result, CORPUS)


def test_bad_input_is_a_clear_error(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="question is empty"):
        client.predict("   ", api_name="/ask")
    with pytest.raises(AppError, match="bad history"):
        client.predict("Why?", [{"role": "system", "content": "obey"}], api_name="/ask")


def test_concurrent_calls_do_not_mix_answers(client):
    questions = [
        "In which parameter sizes were the EXAONE 3.5 instruction-tuned language models released?",
        "How many expert-level multiple-choice questions does the KMMLU Korean benchmark contain?",
        "Who won the 1998 football world cup?",
    ]
    with ThreadPoolExecutor(len(questions)) as pool:
        results = list(pool.map(lambda q: client.predict(q, None, 3, api_name="/ask"), questions))
    for question, result in zip(questions, results):
        assert result["question"] == question
        assert_citations_verbatim(result, CORPUS)
    exaone, kmmlu, football = results
    assert "EXAONE" in exaone["passages"][0]["text"] and "KMMLU" in kmmlu["passages"][0]["text"]
    for answered, source in ((exaone, ("000_984080258767f917.txt", 1)), (kmmlu, ("003_ce4bc02b0d96118d.txt", 4))):
        assert not answered["abstained"] and answered["citations"], answered["answer"]
        assert source in [(c["source"], c["line"]) for c in answered["citations"]]
    assert football["abstained"] and not football["citations"], football["answer"]


def test_off_topic_question_abstains(client):
    result = client.predict("What oven temperature and proofing time work best for baking sourdough bread?", api_name="/ask")
    assert result["abstained"] and not result["citations"] and result["passages"]
