"""LaTeX markup in scraped arXiv abstracts becomes plain text at parse time; plain prose is never touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.corpus import load_corpus
from rag.latex import plain_text


@pytest.mark.parametrize(
    ("written", "plain"),
    [
        (r"an accuracy of 96.4\% on MMLU", "an accuracy of 96.4% on MMLU"),
        (r'In our "{SkillNet}" model', 'In our "SkillNet" model'),
        (r"panoramic (360{\deg}) views", "panoramic (360°) views"),
        (r"a 3\times{} speed-up, Q\&A pairs", "a 3× speed-up, Q&A pairs"),
        (r"we \emph{do not} need labels", "we do not need labels"),
        (r"G{\"o}del, Erd\H{o}s, caf\'e, Fran\c{c}ais", "Gödel, Erdős, café, Français"),
    ],
)
def test_latex_markup_becomes_plain_text(written: str, plain: str) -> None:
    assert plain_text(written) == plain


@pytest.mark.parametrize(
    "prose",
    [
        "a 15% gain on 3 tasks; it costs $5 per run and ~2 hours",  # a bare % or $ is prose, not a comment or math
        "We reach R^3 with $R^3$ and a prompt {with spaces}",  # inline math and multi-word braces stay as written
        "No markup at all.",
    ],
)
def test_plain_prose_is_left_as_written(prose: str) -> None:
    assert plain_text(prose) == prose


def test_corpus_records_hold_plain_text_and_ids_follow_it(tmp_path: Path) -> None:
    latex = tmp_path / "a.jsonl"
    latex.write_text(json.dumps({"title": r"The {SkillNet} model", "abstract": r"It reaches 96.4\% accuracy."}) + "\n")
    plain = tmp_path / "b.txt"
    plain.write_text("Abstract:It reaches 96.4% accuracy.\n")
    papers = load_corpus([latex, plain]).papers
    assert len(papers) == 1  # the same abstract once its markup is read: one paper, found in both files
    assert papers[0].abstract == "It reaches 96.4% accuracy."
    assert papers[0].title == "The SkillNet model"
    assert {loc.source for loc in papers[0].locations} == {"a.jsonl", "b.txt"}
