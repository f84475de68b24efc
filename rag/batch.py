"""`rag batch`: questions from .jsonl / .txt / .csv -> one Answer JSON per line, resumable.

Each record is written and flushed as soon as it is answered, so a crash or kill -9 loses nothing
finished; a second run with the same OUT skips every id already there (a torn last line is cut off
first). A malformed input line becomes an error record for that line and the batch goes on.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from rag.errors import BatchInputError, QuestionError
from rag.types import Answer, BatchRecord

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".jsonl", ".txt", ".csv")


@dataclass(frozen=True)
class BatchItem:
    id: str
    question: str
    line: int
    error: str | None = None  # set when the input line itself is malformed


class Answerer(Protocol):
    def __call__(self, question: str) -> Answer: ...


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise BatchInputError(f"batch input {path} not found") from e
    except UnicodeDecodeError as e:
        raise BatchInputError(f"batch input {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from e


def _jsonl_items(text: str) -> Iterator[BatchItem]:
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            yield BatchItem(str(n), "", n, f"line {n}: not valid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            yield BatchItem(str(n), "", n, f"line {n}: expected a JSON object with a \"question\"")
            continue
        item_id = obj.get("id")
        item_id = str(n) if item_id is None or item_id == "" else str(item_id)
        question = obj.get("question")
        if not isinstance(question, str):
            yield BatchItem(item_id, "", n, f"line {n}: missing or non-string \"question\"")
            continue
        yield BatchItem(item_id, question, n)


def _txt_items(text: str) -> Iterator[BatchItem]:
    for n, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            yield BatchItem(str(n), raw.strip(), n)


def _csv_items(text: str) -> Iterator[BatchItem]:
    rows = csv.reader(io.StringIO(text))
    for n, row in enumerate(rows, start=1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if n == 1 and [c.strip().lower() for c in row[:2]] == ["id", "question"]:
            continue  # header
        if len(row) != 2:
            yield BatchItem(str(n), "", n, f"line {n}: expected 2 columns (id,question), got {len(row)}")
            continue
        item_id, question = row[0].strip() or str(n), row[1]
        yield BatchItem(item_id, question, n)


def read_items(path: Path) -> list[BatchItem]:
    """All items of a batch input; ids made unique (a repeated id becomes an error record)."""
    suffix = path.suffix.lower()
    readers = {".jsonl": _jsonl_items, ".txt": _txt_items, ".csv": _csv_items}
    if suffix not in readers:
        raise BatchInputError(f"batch input {path}: unsupported type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    items, seen = [], set()
    for item in readers[suffix](_read_text(path)):
        if item.id in seen:
            item = BatchItem(f"{item.id}@line{item.line}", item.question, item.line, f"line {item.line}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    return items


def done_ids(out: Path) -> set[str]:
    """Ids already answered in OUT; a torn last line (killed mid-write) is cut off so appends stay valid JSONL."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    ids = set()
    for raw in keep.decode("utf-8", errors="replace").splitlines():
        try:
            ids.add(str(json.loads(raw)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("ignoring an unreadable line in %s", out)
    if len(keep) != len(data):
        logger.warning("%s ended with a partial record (interrupted run); it will be answered again", out)
        with out.open("r+b") as f:
            f.truncate(len(keep))
    return ids


def error_record(item: BatchItem, message: str) -> BatchRecord:
    return BatchRecord(
        id=item.id, question=item.question, standalone_question="", answer="", abstained=False, error=message
    )


def run_batch(answerer: Answerer, input_path: Path, out: Path, progress: bool = True) -> dict[str, int]:
    """Answer every item not yet in OUT, appending one flushed JSON line each. Returns counts.

    `answerer` is a callable question -> Answer, e.g. `Assistant(settings).ask`.
    """
    items = read_items(input_path)
    already = done_ids(out)
    todo = [item for item in items if item.id not in already]
    counts = {"total": len(items), "skipped": len(items) - len(todo), "answered": 0, "errors": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as sink, tqdm(
        total=len(items), initial=counts["skipped"], desc="questions", unit="q", disable=not progress
    ) as bar:
        for item in todo:
            if item.error:
                record = error_record(item, item.error)
            else:
                try:
                    answer = answerer(item.question)
                    record = BatchRecord(id=item.id, **answer.model_dump())
                except QuestionError as e:
                    record = error_record(item, str(e))
            counts["errors" if record.error else "answered"] += 1
            sink.write(record.model_dump_json() + "\n")
            sink.flush()
            bar.update(1)
    return counts
