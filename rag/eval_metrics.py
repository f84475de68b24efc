"""What `rag eval` measures: the records of an evaluation and the pure functions that score them.

No I/O and nothing heavy: question records (QAItem), per-question rows (QuestionResult), the per-split metrics
and report models, and the functions that compute hit rank, papers@5, answer checks, citation scores,
retrieval/answer metrics and latency percentiles. The exact definitions are in rag/eval.py's docstring.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from rag.types import BatchRecord, Location, Passage

SPLITS = ("tune", "holdout")
PAPERS_AT = 5

Loc = tuple[str, int]


# ------------------------------------------------------------------------------------------- records


class QAItem(BaseModel):
    id: str
    question: str
    answerable: bool
    kind: str
    expected_sources: list[Location] = Field(default_factory=list)
    must_contain: list[str] = Field(default_factory=list)
    split: str = "tune"

    @property
    def expected(self) -> set[Loc]:
        return {(loc.source, loc.line) for loc in self.expected_sources}


class QuestionResult(BaseModel):
    """One question's row in the report."""

    id: str
    split: str
    kind: str
    answerable: bool
    question: str
    hit_rank: int | None = Field(default=None, description="1-based rank of the first expected passage; None if missed.")
    papers_found: float | None = Field(default=None, description="Share of expected papers in the top 5 (answerable only).")
    retrieved: list[str] = Field(default_factory=list, description="'source:line' of the retrieved passages, in rank order.")
    answer: str | None = None
    abstained: bool | None = None
    passed: bool | None = Field(default=None, description="Answerable: all must_contain present; unanswerable: abstained.")
    missing: list[str] = Field(default_factory=list, description="must_contain strings absent from the answer.")
    citations: list[str] = Field(default_factory=list, description="'source:line' of each citation, in order.")
    citations_correct: int | None = None
    citation_recall: float | None = None
    first_token_s: float | None = None
    total_s: float | None = None
    error: str | None = None


class RetrievalMetrics(BaseModel):
    questions: int = Field(description="Answerable questions scored.")
    recall_at_1: float | None = None
    recall_at_5: float | None = None
    mrr: float | None = None
    multi_questions: int = 0
    multi_papers_at_5: float | None = Field(default=None, description="Mean share of expected papers in the top 5 (multi).")


class AnswerMetrics(BaseModel):
    answerable: int
    unanswerable: int
    errors: int = 0
    accuracy: float | None = None
    citation_precision: float | None = None
    citation_recall: float | None = None
    multi_all_cited: float | None = Field(
        default=None,
        description="Multi-paper questions whose answer cites every right paper, whatever its wording (abstained: 0);"
        " accuracy also asks for each paper's must_contain string.",
    )
    citations: int = 0
    abstention_rate: float | None = None
    false_abstention_rate: float | None = None
    first_token_p50_s: float | None = None
    first_token_p95_s: float | None = None
    total_p50_s: float | None = None
    total_p95_s: float | None = None


class SplitReport(BaseModel):
    split: str
    questions: int
    retrieval: RetrievalMetrics
    answers: AnswerMetrics | None = None


class EvalReport(BaseModel):
    qa_path: str
    created: str
    retrieval_only: bool
    split: str | None = Field(default=None, description="The split asked for; None: every question.")
    index: str = Field(default="", description="Fingerprint of the index that was searched.")
    model: str | None = None
    prompt_version: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict, description="Retrieval, chunking, answer and llm settings used.")
    seconds: float = 0.0
    splits: dict[str, SplitReport] = Field(description="'tune', 'holdout' and 'all' (only those with questions).")
    kinds: dict[str, SplitReport] = Field(default_factory=dict, description="The same metrics per question kind (all splits).")
    questions: list[QuestionResult]


# ------------------------------------------------------------------------------------------ metrics


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def passage_locations(passage: Passage) -> set[Loc]:
    locations = {(loc.source, loc.line) for loc in passage.locations}
    locations.add((passage.source, passage.line))
    return locations


def hit_rank(ranked: Sequence[set[Loc]], expected: set[Loc]) -> int | None:
    """1-based rank of the first passage (given as its set of locations) that holds an expected location."""
    for rank, locations in enumerate(ranked, start=1):
        if locations & expected:
            return rank
    return None


def group_papers(expected: set[Loc], paper_of: dict[Loc, str]) -> list[set[Loc]]:
    """Expected locations grouped by paper (one abstract at two places is one paper); unknown ones stand alone."""
    groups: dict[str, set[Loc]] = {}
    for loc in sorted(expected):
        groups.setdefault(paper_of.get(loc, f"{loc[0]}:{loc[1]}"), set()).add(loc)
    return list(groups.values())


def papers_found(ranked: Sequence[set[Loc]], papers: list[set[Loc]], at: int = PAPERS_AT) -> float | None:
    """Share of the expected papers that some passage among the first `at` holds."""
    if not papers:
        return None
    top: set[Loc] = set().union(*ranked[:at]) if ranked[:at] else set()
    return sum(1 for paper in papers if paper & top) / len(papers)


def missing_strings(answer: str, must_contain: Sequence[str]) -> list[str]:
    """must_contain strings not found in the answer (case-insensitive, whitespace runs made single spaces)."""
    text = " ".join(answer.split()).casefold()
    return [s for s in must_contain if " ".join(s.split()).casefold() not in text]


def citation_scores(cited: Sequence[Loc], papers: list[set[Loc]]) -> tuple[int, float | None]:
    """(citations that point at an expected source, share of expected papers cited)."""
    expected = set().union(*papers) if papers else set()
    correct = sum(1 for loc in cited if loc in expected)
    recall = sum(1 for paper in papers if paper & set(cited)) / len(papers) if papers else None
    return correct, recall


def retrieval_metrics(rows: Sequence[QuestionResult]) -> RetrievalMetrics:
    scored = [r for r in rows if r.answerable]
    multi = [r for r in scored if r.kind == "multi" and r.papers_found is not None]

    def recall(k: int) -> float | None:
        return mean(1.0 if r.hit_rank is not None and r.hit_rank <= k else 0.0 for r in scored)

    return RetrievalMetrics(
        questions=len(scored),
        recall_at_1=recall(1),
        recall_at_5=recall(5),
        mrr=mean(1.0 / r.hit_rank if r.hit_rank else 0.0 for r in scored),
        multi_questions=len(multi),
        multi_papers_at_5=mean(r.papers_found for r in multi),  # type: ignore[misc]
    )


def answer_metrics(rows: Sequence[QuestionResult]) -> AnswerMetrics:
    answerable = [r for r in rows if r.answerable]
    unanswerable = [r for r in rows if not r.answerable]
    # An error record is neither an answer nor an abstention: it fails accuracy and counts as not abstained.
    answered = [r for r in answerable if not r.error and not r.abstained]
    n_citations = sum(len(r.citations) for r in answered)
    ttft = [r.first_token_s for r in rows if r.first_token_s is not None and not r.error]
    totals = [r.total_s for r in rows if r.total_s is not None and not r.error]
    return AnswerMetrics(
        answerable=len(answerable),
        unanswerable=len(unanswerable),
        errors=sum(1 for r in rows if r.error),
        accuracy=mean(1.0 if r.passed else 0.0 for r in answerable),
        citation_precision=(sum(r.citations_correct or 0 for r in answered) / n_citations) if n_citations else None,
        citation_recall=mean(r.citation_recall for r in answered if r.citation_recall is not None),  # type: ignore[misc]
        multi_all_cited=mean(
            1.0 if not r.error and not r.abstained and (r.citation_recall or 0.0) >= 1.0 else 0.0
            for r in answerable if r.kind == "multi"
        ),
        citations=n_citations,
        abstention_rate=mean(1.0 if r.abstained and not r.error else 0.0 for r in unanswerable),
        false_abstention_rate=mean(1.0 if r.abstained and not r.error else 0.0 for r in answerable),
        first_token_p50_s=percentile(ttft, 50),
        first_token_p95_s=percentile(ttft, 95),
        total_p50_s=percentile(totals, 50),
        total_p95_s=percentile(totals, 95),
    )


def score_record(row: QuestionResult, item: QAItem, record: BatchRecord, papers: list[set[Loc]]) -> None:
    """Fill the answer fields of a row from its batch record."""
    row.answer = record.answer
    row.abstained = record.abstained
    row.error = record.error
    row.first_token_s = record.timings.first_token_s
    row.total_s = record.timings.total_s
    cited = [(c.source, c.line) for c in record.citations]
    row.citations = [f"{s}:{n}" for s, n in cited]
    if record.error:
        row.passed = False
        return
    if item.answerable:
        row.missing = missing_strings(record.answer, item.must_contain) if not record.abstained else list(item.must_contain)
        row.passed = not record.abstained and not row.missing
        if not record.abstained:
            row.citations_correct, row.citation_recall = citation_scores(cited, papers)
    else:
        row.passed = record.abstained

