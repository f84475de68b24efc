"""The fitted answerability gate (rag/gate.json): loads, matches the signals the code computes, and decides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.answerability import SIGNALS, gate_signals
from rag.gate import GATE_FILE, GateError, default_gate, load_gate


def test_the_shipped_gate_matches_the_signals_and_records_its_cross_validation():
    gate = default_gate()
    assert gate.signals == SIGNALS and 0 < gate.threshold < 1
    fitted = json.loads(GATE_FILE.read_text())["fitted"]
    assert "qa_blind8.jsonl" not in fitted["on"] and fitted["cv_false_abstention"] <= 0.05


def test_the_fitted_gate_refuses_an_off_topic_question_and_accepts_an_answerable_one(retriever):
    gate = default_gate()
    for question, answerable in [
        ("How many expert-level multiple-choice questions does the KMMLU Korean benchmark contain?", True),
        ("What oven temperature and proofing time work best for baking sourdough bread?", False),
    ]:
        signals = gate_signals(question, retriever.search(question, k=5))
        assert gate.refuses(signals) is not answerable, (question, gate.probability(signals))


def test_a_gate_fitted_on_other_signals_is_a_clear_error(tmp_path: Path):
    data = json.loads(GATE_FILE.read_text())
    data["signals"] = data["signals"][:-1] + ["something_else"]
    (tmp_path / "gate.json").write_text(json.dumps(data))
    with pytest.raises(GateError, match="refit"):
        load_gate(tmp_path / "gate.json", SIGNALS)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(GateError, match="cannot read"):
        load_gate(tmp_path / "broken.json")


def test_the_assistant_can_use_the_fitted_gate(ingested_settings, retriever):
    from rag.answer import NOT_IN_CORPUS, Assistant

    settings = ingested_settings.model_copy(update={"answer": ingested_settings.answer.model_copy(update={"gate": "fitted"})})

    class NoModel:
        n_ctx = 2048

        def count_chat_tokens(self, messages) -> int:
            return sum(len(m["content"].split()) for m in messages)

        def info(self):
            return None

        def stream_chat(self, *args, **kwargs):
            raise AssertionError("an abstention calls no model")

    answer = Assistant(settings, retriever=retriever, llm=NoModel()).ask(
        "What oven temperature and proofing time work best for baking sourdough bread?"
    )
    assert answer.abstained and answer.answer == NOT_IN_CORPUS
