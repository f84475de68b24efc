"""`rag batch`: questions from .jsonl / .txt / .csv -> one Answer JSON per line, resumable.

Each record is written and flushed as soon as it is answered, so a crash or kill -9 loses nothing
finished; a second run with the same OUT skips every id already there (a torn last line is cut off
first). A malformed input line becomes an error record for that line and the batch goes on.

Every format holds one question per physical line (a line ends at \\n, \\r\\n or \\r only): a question
cannot span lines, not even inside CSV quotes, so a broken line (an unterminated quote, text that is not
valid Unicode) costs that line alone, as an error record naming it, and never swallows the lines after it.
What cannot be used at all is refused before anything is read or written, as one BatchInputError line:
the input and OUT being the same file, an OUT that is a folder or cannot be created, an input that holds
no questions.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from tqdm import tqdm

from rag.errors import BatchInputError, IndexError_, ModelError, QuestionError
from rag.inputs import InvalidText, clean_text
from rag.types import Answer, BatchRecord

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".jsonl", ".txt", ".csv")
_OUTPUT_FIX = "pass -o a file in a folder you can write to"


@dataclass(frozen=True)
class BatchItem:
    id: str
    question: str
    line: int
    error: str | None = None  # set when the input line itself is malformed


class Answerer(Protocol):
    def __call__(self, question: str) -> Answer: ...


# ---- paths: checked before anything is read or written (the CLI calls this before loading the model) ----


def _check_input(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise BatchInputError(f"batch input {path}: unsupported type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if path.is_dir():
        raise BatchInputError(f"batch input {path} is a folder: name a {suffix} file")
    if not path.exists():
        raise BatchInputError(f"batch input {path} not found")


def _same_file(a: Path, b: Path) -> bool:
    """Whether a and b name one file: another spelling, a symlink or a hard link included."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def _check_output(out: Path) -> None:
    try:
        if out.is_dir():
            raise BatchInputError(f"output {out} is a folder: name a file inside it, e.g. -o {out / 'answers.jsonl'}")
        if out.exists():
            if not os.access(out, os.W_OK):
                raise BatchInputError(f"output {out} is not writable: {_OUTPUT_FIX}")
            return
        folder = out.absolute().parent  # the nearest folder that exists; run_batch creates the missing ones
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise BatchInputError(f"output {out} cannot be created: {folder} is a file, not a folder; {_OUTPUT_FIX}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BatchInputError(f"output {out} cannot be created: the folder {folder} is not writable; {_OUTPUT_FIX}")
    except OSError as e:  # e.g. a parent folder that may not be searched
        raise BatchInputError(f"output {out} cannot be used ({e.strerror or e}): {_OUTPUT_FIX}") from e


def check_paths(input_path: Path, out: Path) -> None:
    """Refuse an input that is not there, OUT being the input itself, or an OUT that cannot be written."""
    _check_input(input_path)
    if _same_file(input_path, out):
        raise BatchInputError(
            f"batch input and output are the same file ({input_path}): the answers would be written into the "
            f"questions; pass another output, e.g. -o {input_path.with_name(input_path.stem + '.answers.jsonl')}"
        )
    _check_output(out)


# ---- reading: one item per question line ----


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (Excel's "CSV UTF-8") is not text
    except FileNotFoundError as e:
        raise BatchInputError(f"batch input {path} not found") from e
    except UnicodeDecodeError as e:
        raise BatchInputError(f"batch input {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from e
    except OSError as e:
        raise BatchInputError(f"batch input {path} cannot be read ({e.strerror or e})") from e


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) as an editor counts them. Not str.splitlines: that also breaks at U+2028, U+0085,
    form feeds and the like, which may sit inside a JSON string or a question."""
    yield from enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1)


def _error(item_id: str, n: int, message: str) -> BatchItem:
    return BatchItem(item_id, "", n, f"line {n}: {message}")


def _jsonl_items(text: str) -> Iterator[BatchItem]:
    for n, raw in _lines(text):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            yield _error(str(n), n, f"not valid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            yield _error(str(n), n, 'expected a JSON object with a "question"')
            continue
        item_id = obj.get("id")
        try:
            item_id = str(n) if item_id is None or item_id == "" else clean_text(str(item_id), "the id")
        except InvalidText as e:
            yield _error(str(n), n, str(e))
            continue
        question = obj.get("question")
        if isinstance(question, bool) or not isinstance(question, (str, int, float)):
            yield _error(item_id, n, 'missing or non-text "question"')
            continue
        try:  # a bare number ({"question": 12345}) is the text "12345"
            yield BatchItem(item_id, clean_text(str(question), "the question"), n)
        except InvalidText as e:
            yield _error(item_id, n, str(e))


def _txt_items(text: str) -> Iterator[BatchItem]:
    for n, raw in _lines(text):
        if raw.strip():
            yield BatchItem(str(n), clean_text(raw, "the question").strip(), n)  # valid: the file decoded as UTF-8


def _csv_row(raw: str) -> list[str]:
    """One physical line as one CSV row; csv.Error when it does not parse on its own (strict quoting)."""
    return next(csv.reader([raw], strict=True))


def _csv_items(text: str) -> Iterator[BatchItem]:
    first = True
    for n, raw in _lines(text):
        if not raw.strip():
            continue
        may_be_header, first = first, False
        try:
            row = _csv_row(raw)
        except csv.Error as e:
            if "end of data" in str(e):
                yield _error(str(n), n, "unterminated quote: close it on the same line (a question cannot span lines)")
            else:
                fix = "put a field holding a comma or a quote in double quotes, inner quotes doubled"
                yield _error(str(n), n, f"not valid CSV ({e}): {fix}")
            continue
        if may_be_header and [c.strip().lower() for c in row[:2]] == ["id", "question"]:
            continue
        if len(row) != 2:
            yield _error(str(n), n, f"expected 2 columns (id,question), got {len(row)}")
            continue
        try:
            item_id = clean_text(row[0], "the id").strip() or str(n)
            question = clean_text(row[1], "the question")
        except InvalidText as e:  # cannot happen after a strict UTF-8 decode; kept so no bad text slips past
            yield _error(str(n), n, str(e))
            continue
        yield BatchItem(item_id, question, n)


def read_items(path: Path) -> list[BatchItem]:
    """All items of a batch input; ids made unique (a repeated id becomes an error record).

    BatchInputError when the file cannot be used at all: missing, unsupported, not UTF-8, or without a question.
    """
    _check_input(path)
    readers = {".jsonl": _jsonl_items, ".txt": _txt_items, ".csv": _csv_items}
    items, seen = [], set()
    for item in readers[path.suffix.lower()](_read_text(path)):
        if item.id in seen:
            item = BatchItem(f"{item.id}@line{item.line}", item.question, item.line, f"line {item.line}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise BatchInputError(f"batch input {path} holds no questions: write one question per line")
    return items


# ---- writing: resumable ----


def done_ids(out: Path) -> set[str]:
    """Ids already answered without error in OUT; a torn last line (killed mid-write) is cut off so appends stay valid JSONL."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    ids = set()
    for raw in keep.split(b"\n"):  # records end at \n only: an answer may hold U+2028, which splitlines breaks at
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8", errors="replace"))
            record_id = str(record["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("ignoring an unreadable line in %s", out)
            continue
        # An error record (a malformed line since fixed, a model that was down) is tried again on the next run;
        # the newest record of an id is the one that counts.
        if record.get("error"):
            ids.discard(record_id)
        else:
            ids.add(record_id)
    if len(keep) != len(data):
        logger.warning("%s ended with a partial record (interrupted run); it will be answered again", out)
        with out.open("r+b") as f:
            f.truncate(len(keep))
    return ids


def error_record(item: BatchItem, message: str) -> BatchRecord:
    return BatchRecord(
        id=item.id, question=item.question, standalone_question="", answer="", abstained=False, error=message
    )


def _append(sink: IO[str], record: BatchRecord, out: Path) -> None:
    try:
        sink.write(record.model_dump_json() + "\n")
        sink.flush()
    except OSError as e:
        raise BatchInputError(
            f"cannot write to {out} ({e.strerror or e}): free some space or {_OUTPUT_FIX}; what was written is kept, "
            "run again to go on"
        ) from e


def run_batch(answerer: Answerer, input_path: Path, out: Path, progress: bool = True) -> dict[str, int]:
    """Answer every item not yet in OUT, appending one flushed JSON line each. Returns counts.

    `answerer` is a callable question -> Answer, e.g. `Assistant(settings).ask`.
    """
    check_paths(input_path, out)
    items = read_items(input_path)
    try:
        already = done_ids(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        sink_file = out.open("a", encoding="utf-8")
    except OSError as e:
        raise BatchInputError(f"output {out} cannot be used ({e.strerror or e}): {_OUTPUT_FIX}") from e
    todo = [item for item in items if item.id not in already]
    counts = {"total": len(items), "skipped": len(items) - len(todo), "answered": 0, "errors": 0}
    with sink_file as sink, tqdm(
        total=len(items), initial=counts["skipped"], desc="questions", unit="q", disable=not progress
    ) as bar:
        for item in todo:
            if item.error:
                record = error_record(item, item.error)
            else:
                try:
                    answer = answerer(item.question)
                    record = BatchRecord(id=item.id, **answer.model_dump())
                except (QuestionError, ModelError, IndexError_) as e:  # this question; a later run retries it
                    # A refused question, or a model server that is down or failed mid-answer: an error record, and
                    # the batch goes on (error records are answered again when the batch is run again).
                    record = error_record(item, str(e))
            counts["errors" if record.error else "answered"] += 1
            _append(sink, record, out)
            bar.update(1)
    return counts
