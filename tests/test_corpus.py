"""Corpus parsing: both text formats, JSONL, merging, the bundled corpus, and every bad-file case."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rag.corpus import (
    PAGE_CHROME,
    CorpusLoad,
    iter_corpus_files,
    load_corpus,
    merge_records,
    paper_id_for,
    parse_file,
)
from rag.errors import CorpusError
from rag.latex import plain_text

DATA = Path(__file__).parent / "data"
CORPUS = Path(__file__).resolve().parent.parent / "corpus"
LISTINGS = ("001_0b21518f7ee75860.txt", "002_71fc0758a0d8cc00.txt")
ABSTRACT_FILES = ("000_984080258767f917.txt", "003_ce4bc02b0d96118d.txt")
DUPLICATE_TITLE = "Testing the Limits of Unified Sequence to Sequence LLM Pretraining on Diverse Table Data Tasks"
LONG = (
    "We present a method for a task in natural language processing. It is simple, needs no extra data, and "
    "improves over strong baselines on several public benchmarks while adding little compute at inference time. "
    "We analyse when it helps and release code."
) * 2


def line_of(path: Path, number: int) -> str:
    return path.read_text(encoding="utf-8").split("\n")[number - 1]


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- small fixtures ----------------------------------------------------------------------------


def test_listing_fixture_parsed() -> None:
    path = DATA / "listing_sample.txt"
    records = parse_file(path)
    assert [r.title for r in records] == [
        "Alpha: Retrieval for Long Documents",
        "Beta: Counting Upvotes",
        "Gamma Has No Metadata",
        "Delta: A Date Without a Year",
        "Epsilon: Short Date With Upvotes",
        "Zeta: Last Entry, No Trailing Newline",
    ]
    assert [(r.authors_count, r.date) for r in records] == [
        (5, "Dec 19, 2023"),
        (1, "Jul 3, 2024"),  # trailing upvote count dropped
        (None, None),
        (12, "Jun 9"),
        (3, "Aug 27"),
        (None, None),
    ]
    assert [r.line for r in records] == [15, 23, 31, 35, 45, 53]
    for r in records:
        assert r.source == "listing_sample.txt"
        assert line_of(path, r.line) == r.abstract
        assert r.abstract.startswith("We study") and r.abstract.endswith("released.")
        assert r.paper_id == paper_id_for(r.abstract)


def test_abstract_lines_fixture_parsed() -> None:
    path = DATA / "abstracts_sample.txt"
    records = parse_file(path)
    assert [r.line for r in records] == [1, 2, 4]  # the blank line 3 is skipped
    for r in records:
        assert r.title is None and r.authors_count is None and r.date is None
        assert not r.abstract.startswith("Abstract:")
        assert r.abstract == r.abstract.strip()
        assert r.abstract in line_of(path, r.line)


def test_jsonl_parsed() -> None:
    records = parse_file(DATA / "sample.jsonl")
    assert len(records) == 2
    first, second = records
    assert (first.title, first.authors_count, first.date, first.line) == ("Eta: From JSON", 4, "May 2, 2023", 1)
    assert (second.title, second.authors_count, second.date, second.line) == (None, None, None, 2)
    assert second.abstract.startswith("We study model merging")


def test_merge_across_files_keeps_both_locations() -> None:
    load = load_corpus([DATA / "listing_sample.txt", DATA / "abstracts_sample.txt"])
    assert len(load.records) == 9 and len(load.papers) == 8 and load.duplicates == 1
    merged = [p for p in load.papers if len(p.locations) > 1]
    assert len(merged) == 1
    paper = merged[0]
    assert paper.title == "Alpha: Retrieval for Long Documents"
    assert [(loc.source, loc.line) for loc in paper.locations] == [
        ("listing_sample.txt", 15),
        ("abstracts_sample.txt", 4),
    ]
    # order of first appearance: the listing's papers first
    assert load.papers[0] is paper


def test_merge_takes_metadata_from_first_record_that_has_it(tmp_path: Path) -> None:
    untitled = write(tmp_path, "a.txt", f"Abstract:{LONG}\n")
    titled = write(tmp_path, "b.jsonl", json.dumps({"title": "T", "abstract": f"  {LONG} ", "date": "Jun 9"}) + "\n")
    papers = merge_records(parse_file(untitled) + parse_file(titled))
    assert len(papers) == 1
    assert (papers[0].title, papers[0].date, papers[0].source, papers[0].line) == ("T", "Jun 9", "a.txt", 1)
    assert len(papers[0].locations) == 2


def test_paper_id_is_stable_and_whitespace_insensitive() -> None:
    text = "A  study of\tthings.\n"
    assert paper_id_for(text) == paper_id_for("A study of things.")
    assert paper_id_for(text) == paper_id_for(text)
    assert re.fullmatch(r"[0-9a-f]{16}", paper_id_for(text))
    assert paper_id_for("A study of things.") != paper_id_for("A study of other things.")
    # pinned, so a change of the scheme (which would orphan every stored id) is noticed
    assert paper_id_for("hello world") == "b94d27b9934d3e08"
    a = [r.paper_id for r in parse_file(DATA / "listing_sample.txt")]
    assert a == [r.paper_id for r in parse_file(DATA / "listing_sample.txt")]


def test_iter_corpus_files(tmp_path: Path) -> None:
    for name in ("b.txt", "a.jsonl", "c.md", "z.txt"):
        write(tmp_path, name, "x")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "d.txt", "x")
    files = iter_corpus_files([tmp_path, tmp_path / "b.txt", tmp_path / "sub" / "d.txt"])
    assert [f.name for f in files] == ["a.jsonl", "b.txt", "z.txt", "d.txt"]  # b.txt read once


def test_iter_corpus_files_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        iter_corpus_files([tmp_path / "missing"])
    with pytest.raises(CorpusError, match="no .txt or .jsonl"):
        iter_corpus_files([tmp_path])
    with pytest.raises(CorpusError, match="no corpus paths"):
        iter_corpus_files([])


# --- the bundled corpus ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled() -> CorpusLoad:
    return load_corpus([CORPUS])


def test_bundled_counts(bundled: CorpusLoad) -> None:
    assert [f.name for f in bundled.files] == sorted([*LISTINGS, *ABSTRACT_FILES])
    assert len(bundled.records) == 151
    assert len(bundled.papers) == 150
    assert bundled.duplicates == 1
    per_file = {name: sum(r.source == name for r in bundled.records) for name in [f.name for f in bundled.files]}
    assert per_file == {
        "000_984080258767f917.txt": 5,
        "001_0b21518f7ee75860.txt": 78,
        "002_71fc0758a0d8cc00.txt": 58,
        "003_ce4bc02b0d96118d.txt": 10,
    }


def test_bundled_duplicate_merged(bundled: CorpusLoad) -> None:
    merged = [p for p in bundled.papers if len(p.locations) > 1]
    assert len(merged) == 1
    paper = merged[0]
    assert paper.title == DUPLICATE_TITLE
    assert [(loc.source, loc.line) for loc in paper.locations] == [
        ("001_0b21518f7ee75860.txt", 217),
        ("002_71fc0758a0d8cc00.txt", 459),
    ]
    assert paper.authors_count == 2 and paper.date == "Oct 1, 2023"  # only the 002 entry has metadata
    assert len({p.paper_id for p in bundled.papers}) == 150


def test_bundled_lines_point_at_abstracts(bundled: CorpusLoad) -> None:
    for r in bundled.records:
        text = plain_text(line_of(CORPUS / r.source, r.line))  # as the parser reads it: LaTeX markup as plain text
        assert r.abstract in text, f"{r.source}:{r.line}"
        assert r.abstract == r.abstract.strip()
        assert len(r.abstract) > 500


def test_bundled_no_chrome_or_metadata_in_text(bundled: CorpusLoad) -> None:
    date = re.compile(r"^[A-Z][a-z]{2} \d{1,2}(, \d{4})?( \d+)?$")
    for r in bundled.records:
        for text in filter(None, (r.title, r.abstract)):
            assert text not in PAGE_CHROME
            assert not any(text.startswith(c) or text.endswith(c) for c in PAGE_CHROME if c != "new")
            assert not date.match(text) and "•" not in text and text != "·"
            assert not text.startswith("Abstract:")


def test_bundled_titles_and_metadata(bundled: CorpusLoad) -> None:
    listing = [r for r in bundled.records if r.source in LISTINGS]
    bare = [r for r in bundled.records if r.source in ABSTRACT_FILES]
    assert len(listing) == 136 and len(bare) == 15
    assert all(r.title and len(r.title) < 200 for r in listing)
    assert all(r.title is None and r.authors_count is None and r.date is None for r in bare)
    # every listing title is the line two above its abstract
    for r in listing:
        assert line_of(CORPUS / r.source, r.line - 2) == r.title
    first = listing[0]
    assert (first.title, first.line) == ("Sparse Finetuning for Inference Acceleration of Large Language Models", 13)
    # 001 has no metadata at all; 002 has it for all but one entry (AgentTTS)
    assert all(r.authors_count is None and r.date is None for r in listing if r.source == LISTINGS[0])
    p002 = {r.title: r for r in listing if r.source == LISTINGS[1]}
    assert sum(r.authors_count is not None for r in p002.values()) == 57
    assert sum(r.date is not None for r in p002.values()) == 57
    simq = p002["SimQ-NAS: Simultaneous Quantization Policy and Neural Architecture Search"]
    assert (simq.authors_count, simq.date, simq.line) == (5, "Dec 19, 2023", 15)
    assert p002["Knowledge Composition using Task Vectors with Learned Anisotropic Scaling"].date == "Jul 3, 2024"
    assert p002["TCIA: A Task-Centric Instruction Augmentation Method for Instruction Finetuning"].date == "Aug 27"
    assert p002["Language Models are Few-Shot Learners"].authors_count == 31
    agent = p002["AgentTTS: Large Language Model Agent for Test-time Compute-optimal Scaling Strategy in Complex Tasks"]
    assert (agent.authors_count, agent.date) == (None, None)
    assert all(r.date is None or re.fullmatch(r"[A-Z][a-z]{2} \d{1,2}(, \d{4})?", r.date) for r in listing)


# --- bad files ---------------------------------------------------------------------------------


def assert_corpus_error(path: Path, line: int, *words: str) -> None:
    with pytest.raises(CorpusError) as info:
        parse_file(path)
    message = str(info.value)
    assert f"{path}:{line}:" in message
    for word in words:
        assert word in message, message


def test_non_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "latin1.txt", f"Abstract:{LONG}\nAbstract:caf\xe9 {LONG}\n".encode("latin-1"))
    assert_corpus_error(path, 2, "UTF-8", "re-save")


@pytest.mark.parametrize("text", ["", "\n\n  \n", "new\n\nSubscribe\n\nJul 1\n"])
def test_empty_or_no_abstracts(tmp_path: Path, text: str) -> None:
    assert_corpus_error(write(tmp_path, "empty.txt", text), 1, "no abstracts")


def test_empty_jsonl(tmp_path: Path) -> None:
    assert_corpus_error(write(tmp_path, "empty.jsonl", "\n"), 1, "no abstracts")


def test_listing_truncated_after_title(tmp_path: Path) -> None:
    text = f"Subscribe\n\nJul 1\n\nA Title\n\n{LONG}\n\n  • 2 authors\n·\nJun 9\n\nCut Off Title\n"
    assert_corpus_error(write(tmp_path, "cut.txt", text), 13, "Cut Off Title", "no abstract", "truncated")


def test_listing_title_followed_by_metadata(tmp_path: Path) -> None:
    text = f"A Title\n\n{LONG}\n\nLonely Title\n\n  • 2 authors\n·\nJun 9\n"
    assert_corpus_error(write(tmp_path, "meta.txt", text), 5, "Lonely Title", "no abstract")


def test_listing_title_followed_by_another_entry(tmp_path: Path) -> None:
    text = f"Lonely Title\n\nNext Title\n\n{LONG}\n"
    assert_corpus_error(write(tmp_path, "two.txt", text), 1, "Lonely Title", "line 3 is another title")


def test_abstract_line_without_text(tmp_path: Path) -> None:
    assert_corpus_error(write(tmp_path, "cut.txt", f"Abstract:{LONG}\nAbstract:  \n"), 2, "no text")


def test_abstract_file_with_foreign_line(tmp_path: Path) -> None:
    text = f"Abstract:{LONG}\nsome stray line\n"
    assert_corpus_error(write(tmp_path, "mixed.txt", text), 2, "Abstract:")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"title": "T", "abstract": "cut of', ("invalid JSON",)),
        ('{"title": "T"}', ('"abstract"',)),
        ('{"abstract": ""}', ('"abstract"',)),
        ('["not", "an", "object"]', ("JSON object",)),
        ('{"abstract": "x", "authors_count": "three"}', ('"authors_count"',)),
    ],
)
def test_bad_jsonl(tmp_path: Path, line: str, words: tuple[str, ...]) -> None:
    good = json.dumps({"abstract": LONG})
    path = write(tmp_path, "bad.jsonl", f"{good}\n\n{line}\n")
    assert_corpus_error(path, 3, *words)


def test_load_corpus_stops_at_first_bad_file(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", f"Abstract:{LONG}\n")
    write(tmp_path, "b.txt", "")
    with pytest.raises(CorpusError, match="b.txt:1:"):
        load_corpus([tmp_path])


# --- variants the bundled corpus does not show ------------------------------------------------


def test_listing_untitled_entry_and_midfile_chrome(tmp_path: Path) -> None:
    other = LONG.replace("method", "model")
    text = (
        f"new\n\nSubscribe\n\nNov 6\n\n{LONG}\n\n  • 4 authors\n·\nMay 7, 2023\n\n"
        f"Get trending papers in your email inbox!\n\nNov 7\n\nSecond\n\n{other}\n"
    )
    path = write(tmp_path, "odd.txt", text)
    records = parse_file(path)
    assert [(r.title, r.line, r.authors_count, r.date) for r in records] == [
        (None, 7, 4, "May 7, 2023"),
        ("Second", 19, None, None),  # "Nov 7" after chrome is a day header, not a date of entry 1 or 2
    ]


def test_crlf_and_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "crlf.txt", ("\ufeff" + f"Title\r\n\r\n{LONG}\r\n\r\n  • 2 authors\r\n·\r\nJun 9 4\r\n"))
    [record] = parse_file(path)
    assert (record.title, record.abstract, record.line, record.authors_count, record.date) == (
        "Title", LONG, 3, 2, "Jun 9")
