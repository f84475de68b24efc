"""Batch input parsing, error records and resume, with a scripted answerer (the real model runs in test_answer/test_cli)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.batch import done_ids, read_items, run_batch
from rag.errors import BatchInputError, QuestionError
from rag.types import Answer


class ScriptedAnswerer:
    def __init__(self, fail_on: str | None = None):
        self.asked: list[str] = []
        self.fail_on = fail_on

    def __call__(self, question: str) -> Answer:
        if self.fail_on and self.fail_on in question:
            raise QuestionError("the question is too long")
        self.asked.append(question)
        return Answer(question=question, standalone_question=question, answer=f"about {question}", abstained=False)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_ids_default_to_line_numbers_and_bad_lines_become_error_records(tmp_path: Path):
    src = tmp_path / "q.jsonl"
    src.write_text(
        '{"id": "a", "question": "first?"}\n'
        "{not json\n"
        '{"question": "no id?"}\n'
        "\n"
        '{"id": "b"}\n'
        '["a", "list"]\n'
        '{"id": "a", "question": "same id again?"}\n'
    )
    out = tmp_path / "out.jsonl"
    counts = run_batch(ScriptedAnswerer(), src, out, progress=False)
    records = _records(out)
    assert [r["id"] for r in records] == ["a", "2", "3", "b", "6", "a@line7"]
    assert counts == {"total": 6, "skipped": 0, "answered": 2, "errors": 4}
    errors = {r["id"]: r["error"] for r in records if r["error"]}
    assert "not valid JSON" in errors["2"] and "question" in errors["b"] and "duplicate id" in errors["a@line7"]
    assert records[0]["answer"] == "about first?" and records[0]["error"] is None


def test_txt_and_csv_inputs(tmp_path: Path):
    txt = tmp_path / "q.txt"
    txt.write_text("one?\n\n two? \n")
    assert [(i.id, i.question) for i in read_items(txt)] == [("1", "one?"), ("3", "two?")]
    csv_file = tmp_path / "q.csv"
    csv_file.write_text('id,question\nx,"a, comma?"\ny\n,z?\n')
    items = read_items(csv_file)
    assert [(i.id, i.question, i.error is None) for i in items] == [("x", "a, comma?", True), ("3", "", False), ("4", "z?", True)]


def test_unsupported_or_missing_input_is_a_clear_error(tmp_path: Path):
    with pytest.raises(BatchInputError, match="unsupported"):
        read_items(tmp_path / "q.pdf")
    with pytest.raises(BatchInputError, match="not found"):
        read_items(tmp_path / "missing.jsonl")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9?\n")
    with pytest.raises(BatchInputError, match="UTF-8"):
        read_items(bad)


def test_resume_skips_finished_ids_and_repairs_a_torn_last_line(tmp_path: Path):
    src = tmp_path / "q.txt"
    src.write_text("q1?\nq2?\nq3?\n")
    out = tmp_path / "out.jsonl"
    first = ScriptedAnswerer()
    run_batch(first, src, out, progress=False)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed while writing the second record
    assert done_ids(out) == {"1"}
    second = ScriptedAnswerer()
    counts = run_batch(second, src, out, progress=False)
    assert second.asked == ["q2?", "q3?"]
    assert counts["skipped"] == 1 and counts["answered"] == 2
    assert [r["id"] for r in _records(out)] == ["1", "2", "3"]
    third = ScriptedAnswerer()
    run_batch(third, src, out, progress=False)
    assert third.asked == []


def test_question_errors_are_recorded_and_the_batch_goes_on(tmp_path: Path):
    src = tmp_path / "q.txt"
    src.write_text("short?\nTOO LONG?\nlast?\n")
    out = tmp_path / "out.jsonl"
    run_batch(ScriptedAnswerer(fail_on="TOO LONG"), src, out, progress=False)
    records = _records(out)
    assert [r["error"] is None for r in records] == [True, False, True]
    assert "too long" in records[1]["error"]
