"""Corpus files -> PaperRecords -> Papers.

Three inputs are understood, chosen per file:

* listing pages (a saved "Daily Papers" page): page chrome, then entries of a title line, a blank
  line, the abstract on one line, and optional metadata (``  • 5 authors``, ``·``, a date such as
  ``Dec 19, 2023`` or ``Jun 9``, possibly followed by an upvote count: ``Jul 3, 2024 3``);
* ``Abstract:<text>`` lines, one abstract per line and no title;
* JSONL (``.jsonl``): one object per line with ``abstract`` and optional ``title``,
  ``authors_count`` and ``date``.

The parser is pure: it reads files and returns records or raises :class:`CorpusError` naming the
file and line. Each record keeps the 1-based line of its abstract, so answers can cite file:line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from rag.errors import CorpusError
from rag.inputs import InvalidText, clean_text, has_real_text
from rag.latex import plain_text
from rag.types import Location, Paper, PaperRecord

logger = logging.getLogger(__name__)

CORPUS_SUFFIXES = (".txt", ".jsonl")
ABSTRACT_PREFIX = "Abstract:"
# Lines of the listing page's own interface; never part of a title or an abstract.
PAGE_CHROME = frozenset(
    {
        "new",
        "Get trending papers in your email inbox!",
        "Subscribe",
        "Daily Papers",
        "byAK and the research community",
    }
)
# A text line longer than this cannot be a title (titles in the corpus are at most ~140 chars,
# abstracts at least ~800).
MAX_TITLE_CHARS = 300
# What one record may be (refused with file:line beyond it). Real abstracts are far shorter (arXiv caps them at
# 1,920 characters, PubMed's longest run to ~10,000); a longer "abstract" is a whole paper or a broken export,
# and one such record must not fill the index (it becomes thousands of chunks).
MAX_ABSTRACT_CHARS = 20_000
MAX_TITLE_FIELD_CHARS = 1_000
_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
# "Dec 19, 2023", "Jun 9", and either with a trailing upvote count: "Jul 3, 2024 3", "Aug 27 3".
_DATE_RE = re.compile(rf"^(?P<date>(?:{_MONTHS}) \d{{1,2}}(?:, \d{{4}})?)(?: (?P<count>\d+))?$")
_AUTHORS_RE = re.compile(r"^•\s*(?P<n>\d+)\s+authors?$")
_SEPARATOR = "·"


def paper_id_for(abstract: str) -> str:
    """Stable id of an abstract: sha256 of its whitespace-normalised text, first 16 hex chars."""
    normalised = " ".join(abstract.split())
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


def _error(path: Path, line: int, what: str, fix: str) -> CorpusError:
    return CorpusError(f"{path}:{line}: {what}: {fix}")


def _read_lines(path: Path) -> list[str]:
    """The file's lines (1-based index = list index + 1), decoded strictly as UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"{path}: cannot read corpus file ({e.strerror}): check the path and its permissions") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _error(
            path, line, f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})", "re-save the file as UTF-8"
        ) from e
    # Split on "\n" only (not str.splitlines, which also splits on \x0c, \u2028, ...), so line
    # numbers agree with editors, grep and sed.
    return [line.rstrip("\r") for line in text.split("\n")]


def _record(abstract: str, path: Path, line: int, title: str | None = None, **meta: object) -> PaperRecord:
    """A checked record: valid Unicode, control characters turned into spaces, LaTeX markup turned into plain text
    (rag.latex), some real text, within the limits."""
    try:
        abstract = plain_text(clean_text(abstract, "the abstract")).strip()
        title = plain_text(clean_text(title, "the title")).strip() or None if title is not None else None
    except InvalidText as e:
        raise _error(path, line, str(e), "fix or remove the record") from e
    if not has_real_text(abstract):
        raise _error(path, line, "the abstract holds no letters or digits (empty, NUL bytes or punctuation only)",
                     "fix or remove the record")
    if len(abstract) > MAX_ABSTRACT_CHARS:
        raise _error(path, line, f"the abstract is {len(abstract):,} characters long; the limit is {MAX_ABSTRACT_CHARS:,}",
                     "split it into papers or shorten it (is it a whole paper rather than an abstract?)")
    if title is not None and len(title) > MAX_TITLE_FIELD_CHARS:
        raise _error(path, line, f"the title is {len(title):,} characters long; the limit is {MAX_TITLE_FIELD_CHARS:,}",
                     "shorten it")
    return PaperRecord(
        paper_id=paper_id_for(abstract), title=title, abstract=abstract, source=path.name, line=line, **meta
    )


def _no_abstracts(path: Path) -> CorpusError:
    return _error(path, 1, "no abstracts found (the file is empty or holds only page chrome)",
                  "remove it from the corpus or re-export it")


# --- Abstract: lines ---------------------------------------------------------------------------


def _parse_abstract_lines(path: Path, lines: list[str]) -> list[PaperRecord]:
    records: list[PaperRecord] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        if not text.startswith(ABSTRACT_PREFIX):
            raise _error(path, number, f"expected a line starting with {ABSTRACT_PREFIX!r}, found {text[:60]!r}",
                         "fix or remove the line (a file is either all 'Abstract:' lines or a listing page)")
        abstract = text[len(ABSTRACT_PREFIX):].strip()
        if not abstract:
            raise _error(path, number, f"{ABSTRACT_PREFIX!r} with no text (truncated line?)",
                         "restore the abstract text or remove the line")
        records.append(_record(abstract, path, number))
    return records


# --- listing pages -----------------------------------------------------------------------------


class _Kind(Enum):
    CHROME = "chrome"
    TEXT = "text"
    AUTHORS = "authors"
    SEPARATOR = "separator"
    DATE = "date"


@dataclass(frozen=True)
class _Token:
    kind: _Kind
    line: int
    text: str


def _tokenize_listing(lines: list[str]) -> list[_Token]:
    """Non-blank lines, classified."""
    tokens: list[_Token] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        if text in PAGE_CHROME:
            kind = _Kind.CHROME
        elif _AUTHORS_RE.match(text):
            kind = _Kind.AUTHORS
        elif text == _SEPARATOR:
            kind = _Kind.SEPARATOR
        elif _DATE_RE.match(text):
            kind = _Kind.DATE
        else:
            kind = _Kind.TEXT
        tokens.append(_Token(kind, number, text))
    return tokens


def _title_shaped(token: _Token) -> bool:
    return token.kind is _Kind.TEXT and len(token.text) <= MAX_TITLE_CHARS


def _parse_listing(path: Path, lines: list[str]) -> list[PaperRecord]:
    """Entries are title, abstract, optional metadata. A date line is metadata when it follows an
    abstract, an authors line or the '·' separator; at the top of the page or after page chrome
    (e.g. 'Jul 1') it is a day header and skipped."""
    tokens = _tokenize_listing(lines)
    records: list[PaperRecord] = []
    title: _Token | None = None  # a title still waiting for its abstract
    previous: _Token | None = None

    def no_abstract(t: _Token, seen: str) -> CorpusError:
        return _error(path, t.line, f"entry {t.text[:60]!r} has a title but no abstract ({seen})",
                      "the file looks truncated or hand-edited: restore the abstract or remove the title line")

    for i, token in enumerate(tokens):
        if token.kind is _Kind.CHROME:
            pass
        elif token.kind is _Kind.TEXT:
            if title is None:
                if _title_shaped(token):
                    title = token
                else:
                    logger.warning("%s:%d: abstract without a title line; keeping it untitled", path, token.line)
                    records.append(_record(token.text, path, token.line))
            else:
                following = next((t for t in tokens[i + 1:] if t.kind is not _Kind.CHROME), None)
                if _title_shaped(token) and following is not None and following.kind is _Kind.TEXT \
                        and not _title_shaped(following):
                    raise no_abstract(title, f"line {token.line} is another title")
                if len(token.text) < 200:
                    logger.warning("%s:%d: unusually short abstract (%d chars)", path, token.line, len(token.text))
                records.append(_record(token.text, path, token.line, title=title.text))
                title = None
        elif token.kind is _Kind.DATE and (previous is None or previous.kind is _Kind.CHROME):
            logger.debug("%s:%d: day header %r skipped", path, token.line, token.text)
            if title is not None:
                raise no_abstract(title, f"a day header follows at line {token.line}")
        else:  # metadata
            if title is not None:
                raise no_abstract(title, f"metadata follows at line {token.line}")
            if not records:
                logger.warning("%s:%d: metadata %r before any entry; ignored", path, token.line, token.text)
            elif (match := _AUTHORS_RE.match(token.text)) is not None:
                records[-1] = records[-1].model_copy(update={"authors_count": int(match["n"])})
            elif (match := _DATE_RE.match(token.text)) is not None:
                records[-1] = records[-1].model_copy(update={"date": match["date"]})
        previous = token

    if title is not None:
        raise no_abstract(title, "end of file reached")
    return records


# --- JSONL -------------------------------------------------------------------------------------


def _parse_jsonl(path: Path, lines: list[str]) -> list[PaperRecord]:
    records: list[PaperRecord] = []
    fix = 'each line must be a JSON object like {"title": ..., "abstract": ..., "authors_count": 3, "date": "Jun 9"}'
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise _error(path, number, f"invalid JSON ({e.msg} at column {e.colno}; truncated line?)", fix) from e
        if not isinstance(obj, dict):
            raise _error(path, number, f"expected a JSON object, found {type(obj).__name__}", fix)
        abstract = obj.get("abstract")
        if not isinstance(abstract, str) or not abstract.strip():
            raise _error(path, number, 'missing or empty "abstract"', fix)
        title = obj.get("title")
        authors_count = obj.get("authors_count")
        date = obj.get("date")
        if title is not None and not isinstance(title, str):
            raise _error(path, number, '"title" must be a string or null', fix)
        if authors_count is not None and (isinstance(authors_count, bool) or not isinstance(authors_count, int)):
            raise _error(path, number, '"authors_count" must be an integer or null', fix)
        if date is not None and not isinstance(date, str):
            raise _error(path, number, '"date" must be a string or null', fix)
        records.append(
            _record(abstract.strip(), path, number, title=(title or "").strip() or None,
                    authors_count=authors_count, date=(date or "").strip() or None)
        )
    return records


# --- public API --------------------------------------------------------------------------------


def parse_file(path: Path) -> list[PaperRecord]:
    """Parse one corpus file; the format is chosen by suffix (.jsonl) or, for text, by its first line."""
    path = Path(path)
    lines = _read_lines(path)
    if path.suffix.lower() == ".jsonl":
        records = _parse_jsonl(path, lines)
    else:
        first = next((line.strip() for line in lines if line.strip() and line.strip() not in PAGE_CHROME), None)
        if first is None:
            raise _no_abstracts(path)
        parse = _parse_abstract_lines if first.startswith(ABSTRACT_PREFIX) else _parse_listing
        records = parse(path, lines)
    if not records:
        raise _no_abstracts(path)
    logger.debug("%s: %d records", path, len(records))
    return records


def iter_corpus_files(paths: Sequence[Path]) -> list[Path]:
    """Files given directly, plus the *.txt / *.jsonl files directly inside given folders (sorted
    by name). A path given twice is read once."""
    if not paths:
        raise CorpusError("no corpus paths given: pass a corpus file or folder (or set RAG_CORPUS_PATHS)")
    files: list[Path] = []
    seen: set[Path] = set()
    for given in map(Path, paths):
        if not given.exists():
            raise CorpusError(f"{given}: corpus path not found: pass an existing file or folder")
        if given.is_dir():
            found = sorted(
                (p for p in given.iterdir() if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES),
                key=lambda p: p.name,
            )
            if not found:
                raise CorpusError(
                    f"{given}: no .txt or .jsonl files in this folder: add corpus files or pass another path"
                )
        else:
            found = [given]
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    names = [f.name for f in files]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        logger.warning("corpus files share a name (citations give only the name): %s", ", ".join(clashes))
    return files


def merge_records(records: list[PaperRecord]) -> list[Paper]:
    """Merge records with the same abstract (same paper_id) into one Paper, keeping every location.

    Papers come in order of first appearance; title, date and authors_count come from the first
    record that has them.
    """
    papers: dict[str, Paper] = {}
    for record in records:
        location = Location(source=record.source, line=record.line)
        paper = papers.get(record.paper_id)
        if paper is None:
            papers[record.paper_id] = Paper(
                paper_id=record.paper_id,
                title=record.title,
                abstract=record.abstract,
                authors_count=record.authors_count,
                date=record.date,
                locations=[location],
            )
            continue
        logger.info("duplicate abstract %s at %s:%d (first seen at %s:%d)", record.paper_id,
                    record.source, record.line, paper.source, paper.line)
        if location not in paper.locations:
            paper.locations.append(location)
        for field in ("title", "authors_count", "date"):
            if getattr(paper, field) is None and getattr(record, field) is not None:
                setattr(paper, field, getattr(record, field))
    return list(papers.values())


@dataclass
class CorpusLoad:
    """Everything read from the corpus: raw records, merged papers, and the files they came from."""

    records: list[PaperRecord]
    papers: list[Paper]
    files: list[Path]

    @property
    def duplicates(self) -> int:
        return len(self.records) - len(self.papers)


def load_corpus(paths: Sequence[Path]) -> CorpusLoad:
    """Read every corpus file under `paths` and merge duplicate abstracts."""
    files = iter_corpus_files(paths)
    records = [record for file in files for record in parse_file(file)]
    papers = merge_records(records)
    logger.info("corpus: %d files, %d records, %d papers (%d duplicates)",
                len(files), len(records), len(papers), len(records) - len(papers))
    return CorpusLoad(records=records, papers=papers, files=files)
