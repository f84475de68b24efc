"""Batch input parsing, error records and resume, with a scripted answerer (the real model runs in test_answer/test_cli)."""

from __future__ import annotations

import json
import os
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


# ---- hardening: paths, CSV lines, empty input, invalid text ----


def _cli_batch(*args: str):
    """`rag batch ...` in-process, with a model that does not exist: a path check that comes first answers instead."""
    from click.testing import CliRunner

    from rag.cli import cli

    return CliRunner().invoke(cli, ["batch", *args, "--model", "/nonexistent/none.gguf"])


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink"])
def test_input_as_output_is_refused_before_anything_is_read_or_written(tmp_path: Path, suffix: str, spelling: str):
    src = tmp_path / f"q{suffix}"
    src.write_text('{"id": "a", "question": "first?"}\n' if suffix == ".jsonl" else "first?\n")
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    out = {"same": src, "dotdot": tmp_path / "sub" / ".." / src.name, "symlink": tmp_path / "link.jsonl"}[spelling]
    if spelling == "symlink":
        out.symlink_to(src)
    answerer = ScriptedAnswerer()
    with pytest.raises(BatchInputError, match="same file"):
        run_batch(answerer, src, out, progress=False)
    assert answerer.asked == [] and src.read_bytes() == before


def test_cli_refuses_input_as_output_before_loading_the_model(tmp_path: Path):
    src = tmp_path / "q.jsonl"
    src.write_text('{"id": "a", "question": "first?"}\n')
    result = _cli_batch(str(src), "-o", str(tmp_path / "." / "q.jsonl"))
    assert result.exit_code == BatchInputError.exit_code, result.output
    assert "error: batch input and output are the same file" in result.output and "-o " in result.output
    assert "already done" not in result.output
    assert src.read_text() == '{"id": "a", "question": "first?"}\n'


def test_csv_unterminated_quote_is_an_error_record_for_its_line_and_later_lines_are_read(tmp_path: Path):
    src = tmp_path / "q.csv"
    src.write_text('id,question\nx1,"What is Qwen2.5?\nx2,What is Komodo?\nx3,"ok, quoted"\nx4,"a" b\n')
    items = read_items(src)
    assert [(i.id, i.question) for i in items] == [("2", ""), ("x2", "What is Komodo?"), ("x3", "ok, quoted"), ("5", "")]
    assert items[0].error.startswith("line 2: unterminated quote")
    assert items[3].error.startswith("line 5: not valid CSV")
    out = tmp_path / "out.jsonl"
    answerer = ScriptedAnswerer()
    counts = run_batch(answerer, src, out, progress=False)
    assert answerer.asked == ["What is Komodo?", "ok, quoted"]
    assert counts == {"total": 4, "skipped": 0, "answered": 2, "errors": 2}
    assert [r["id"] for r in _records(out)] == ["2", "x2", "x3", "5"]


def test_csv_header_after_a_byte_order_mark_is_still_a_header(tmp_path: Path):
    src = tmp_path / "excel.csv"
    src.write_bytes("\ufeffid,question\nx,What is Komodo?\n".encode())
    assert [(i.id, i.question, i.error) for i in read_items(src)] == [("x", "What is Komodo?", None)]


@pytest.mark.parametrize(
    ("name", "content"),
    [("q.jsonl", ""), ("q.txt", "\n  \n\t\n"), ("q.csv", "id,question\n"), ("q.csv", "\n"), ("q.jsonl", "\n\n")],
)
def test_input_without_questions_is_an_error(tmp_path: Path, name: str, content: str):
    src = tmp_path / name
    src.write_text(content)
    out = tmp_path / "out.jsonl"
    with pytest.raises(BatchInputError, match="holds no questions"):
        run_batch(ScriptedAnswerer(), src, out, progress=False)
    assert not out.exists()
    result = _cli_batch(str(src), "-o", str(out))
    assert result.exit_code == BatchInputError.exit_code, result.output
    assert f"error: batch input {src} holds no questions" in result.output and "answered" not in result.output


def test_output_that_cannot_be_written_is_a_one_line_error_before_the_model(tmp_path: Path):
    src = tmp_path / "q.txt"
    src.write_text("one?\n")
    folder = tmp_path / "answers"
    folder.mkdir()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for out, expected in [(folder, "is a folder"), (a_file / "out.jsonl", "is a file, not a folder"),
                          (a_file / "deeper" / "out.jsonl", "is a file, not a folder")]:
        result = _cli_batch(str(src), "-o", str(out))
        assert result.exit_code == BatchInputError.exit_code, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: output {out} ") and expected in lines[0], result.output
        assert isinstance(result.exception, SystemExit)  # no traceback
        answerer = ScriptedAnswerer()
        with pytest.raises(BatchInputError, match=expected):
            run_batch(answerer, src, out, progress=False)
        assert answerer.asked == []
    # a missing folder under a writable one is fine: it is created
    counts = run_batch(ScriptedAnswerer(), src, tmp_path / "new" / "dir" / "out.jsonl", progress=False)
    assert counts["answered"] == 1


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_output_in_a_read_only_folder_is_refused(tmp_path: Path):
    src = tmp_path / "q.txt"
    src.write_text("one?\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(BatchInputError, match="not writable"):
            run_batch(ScriptedAnswerer(), src, locked / "out.jsonl", progress=False)
    finally:
        locked.chmod(0o700)


def test_invalid_unicode_becomes_an_error_record_and_numbers_are_questions(tmp_path: Path):
    src = tmp_path / "q.jsonl"
    src.write_text(
        '{"id": "z1", "question": "What is Komodo?"}\n'
        '{"id":"z2","question":"\\ud800 x"}\n'  # a lone surrogate, spelled as a JSON escape
        '{"id": "\\udc80", "question": "bad id?"}\n'
        '{"id": "n", "question": 12345}\n'
        '{"id": "c", "question": "tab\\tand\\u0000nul?"}\n'
        '{"id": "t", "question": true}\n'
        '{"id": "z3", "question": "last?"}\n'
    )
    out = tmp_path / "out.jsonl"
    answerer = ScriptedAnswerer()
    counts = run_batch(answerer, src, out, progress=False)
    assert answerer.asked == ["What is Komodo?", "12345", "tab\tand nul?", "last?"]
    assert counts == {"total": 7, "skipped": 0, "answered": 4, "errors": 3}
    records = _records(out)  # every line is valid JSON
    errors = {r["id"]: r["error"] for r in records if r["error"]}
    assert set(errors) == {"z2", "3", "t"}
    assert errors["z2"].startswith("line 2: the question is not valid Unicode") and "U+D800" in errors["z2"]
    assert errors["3"].startswith("line 3: the id is not valid Unicode")
    out.read_text(encoding="utf-8")


def test_a_line_separator_inside_a_question_stays_one_line_and_resumes(tmp_path: Path):
    src = tmp_path / "q.jsonl"
    src.write_text(json.dumps({"id": "s", "question": "one\u2028two\x85three?"}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    first = ScriptedAnswerer()
    run_batch(first, src, out, progress=False)
    assert len(first.asked) == 1 and "\u2028" in first.asked[0]
    assert done_ids(out) == {"s"}
    second = ScriptedAnswerer()
    assert run_batch(second, src, out, progress=False)["skipped"] == 1 and second.asked == []


def test_error_records_are_tried_again_on_the_next_run(tmp_path: Path):
    src = tmp_path / "q.jsonl"
    src.write_text('{"id": "a", "question": "fine?"}\n{"id": "b", "question": "TOO LONG?"}\n')
    out = tmp_path / "out.jsonl"
    run_batch(ScriptedAnswerer(fail_on="TOO LONG"), src, out, progress=False)
    assert done_ids(out) == {"a"}
    src.write_text('{"id": "a", "question": "fine?"}\n{"id": "b", "question": "short now?"}\n')  # the line is fixed
    answerer = ScriptedAnswerer()
    counts = run_batch(answerer, src, out, progress=False)
    assert answerer.asked == ["short now?"] and counts["skipped"] == 1 and counts["answered"] == 1
    newest = {r["id"]: r for r in _records(out)}  # the newest record of an id is the one that counts
    assert newest["b"]["error"] is None and done_ids(out) == {"a", "b"}
