"""`rag eval`: score retrieval and cited answers against a question set (eval/qa_dev.jsonl).

Retrieval is scored with the same Retriever the assistant uses; answers go through the very code path of
`rag batch` (`run_batch` over a temporary .jsonl), so what is measured is what users run. Metrics are
reported per split (tune / holdout / all): tune on `tune`, look at `holdout` only to confirm.

Definitions (all case-insensitive where text is compared):
- hit rank: 1-based rank of the first retrieved passage one of whose locations (every (source, line) the
  abstract occurs at) is an expected source; recall@k = share of answerable questions with hit rank <= k;
  MRR = mean of 1/hit rank (0 when not in the list). The list is `search(question, k=max(5, retrieval.k))`,
  the exact list the assistant is given.
- papers@5 (multi-paper questions): share of the expected papers found among the top 5.
- accuracy: answerable questions whose answer contains every must_contain string (abstaining fails).
- citation precision: citations whose (source, line) is an expected source, over all citations of the
  answerable questions that were not abstained on (pooled); citation recall: share of a question's expected
  papers that are cited, averaged over the same questions.
- abstention rate: unanswerable questions abstained on; false abstention rate: answerable ones abstained on.
- latency: p50 / p95 of first_token_s (questions where the model ran) and total_s (all answered questions),
  after the assistant's warm_up() (model loaded, system prompt cached), as in the web app.

Nothing heavy is imported at module level: models and the store load only when `evaluate` runs.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import BaseModel, Field, ValidationError

from rag.config import PROJECT_ROOT, Settings
from rag.errors import ConfigError, RagError
from rag.types import BatchRecord, Location, Passage

if TYPE_CHECKING:  # pragma: no cover
    from rag.retrieval import Retriever

logger = logging.getLogger(__name__)

DEFAULT_QA_PATH = PROJECT_ROOT / "eval" / "qa_dev.jsonl"
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


# ------------------------------------------------------------------------------------------ running


def load_qa(path: Path) -> list[QAItem]:
    """The questions of a QA .jsonl file; a bad line raises ConfigError naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read the question set {path}: {e}") from e
    items = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            items.append(QAItem.model_validate_json(raw))
        except ValidationError as e:
            raise ConfigError(f"{path}:{n}: not a valid question record ({e.error_count()} errors: {e.errors()[0]['msg']})") from e
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: question ids are not unique")
    return items


def _paper_index(settings: Settings) -> dict[Loc, str]:
    """(source, line) -> paper id for every abstract of the configured corpus (groups duplicate abstracts)."""
    from rag.corpus import load_corpus

    try:
        corpus = load_corpus(list(settings.corpus_paths))
    except RagError as e:
        logger.warning("cannot read the corpus to group expected sources by paper (%s); each location counts alone", e)
        return {}
    return {(loc.source, loc.line): paper.paper_id for paper in corpus.papers for loc in paper.locations}


def _make_answerer(settings: Settings):
    try:
        from rag.answer import Assistant
    except ImportError as e:
        raise ConfigError(f"answer evaluation needs rag.answer.Assistant ({e}); use --retrieval-only") from e
    return Assistant(settings)


def _run_answers(answerer, items: list[QAItem], work: Path, progress: bool) -> dict[str, BatchRecord]:
    """Answer the questions through `rag batch`'s run_batch; the records by id."""
    from rag.batch import run_batch

    work.mkdir(parents=True, exist_ok=True)
    questions, answers = work / "questions.jsonl", work / "answers.jsonl"
    questions.write_text("".join(json.dumps({"id": i.id, "question": i.question}) + "\n" for i in items), encoding="utf-8")
    answers.unlink(missing_ok=True)  # an eval answers everything afresh
    ask = answerer.ask if hasattr(answerer, "ask") else answerer  # an Assistant, or a callable question -> Answer
    warm_up = getattr(answerer, "warm_up", None)
    if callable(warm_up):  # load the model first, so the latency figures are those of a running assistant
        warm_up()
    run_batch(ask, questions, answers, progress=progress)
    records = {}
    for raw in answers.read_text(encoding="utf-8").splitlines():
        if raw.strip():
            record = BatchRecord.model_validate_json(raw)
            records[record.id] = record
    return records


def evaluate(
    settings: Settings,
    qa_path: Path = DEFAULT_QA_PATH,
    retrieval_only: bool = False,
    split: str | None = None,
    out_dir: Path | None = None,
    *,
    retriever: Retriever | None = None,
    answerer: Any = None,  # an Assistant (its .ask is used) or a callable question -> Answer
    progress: bool = False,
) -> EvalReport:
    """Score retrieval (and, unless retrieval_only, answers) on the questions of qa_path.

    split: only that split's questions. out_dir: keep the batch input/output there (else a temp dir).
    retriever / answerer: reuse already-loaded ones (tests, tuning); by default they are built from settings.
    """
    started = time.perf_counter()
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    items = [i for i in load_qa(Path(qa_path)) if split is None or i.split == split]
    if not items:
        raise ConfigError(f"{qa_path} has no questions{f' in split {split!r}' if split else ''}")

    if not retrieval_only and answerer is None:
        answerer = _make_answerer(settings)
    if retriever is None:
        shared = getattr(answerer, "retriever", None)
        if shared is not None and hasattr(shared, "search"):
            retriever = shared
        else:
            from rag.retrieval import Retriever

            retriever = Retriever(settings)

    paper_of = _paper_index(settings)
    depth = max(PAPERS_AT, settings.retrieval.k)
    rows: list[QuestionResult] = []
    papers_by_id: dict[str, list[set[Loc]]] = {}
    for item in items:
        passages = retriever.search(item.question, k=depth)
        ranked = [passage_locations(p) for p in passages]
        papers = group_papers(item.expected, paper_of)
        papers_by_id[item.id] = papers
        row = QuestionResult(
            id=item.id,
            split=item.split,
            kind=item.kind,
            answerable=item.answerable,
            question=item.question,
            retrieved=[f"{p.source}:{p.line}" for p in passages],
        )
        if item.answerable:
            row.hit_rank = hit_rank(ranked, item.expected)
            row.papers_found = papers_found(ranked, papers)
        rows.append(row)

    model = prompt_version = None
    if not retrieval_only:
        with tempfile.TemporaryDirectory(prefix="rag-eval-") as tmp:
            records = _run_answers(answerer, items, Path(out_dir) if out_dir else Path(tmp), progress)
        for item, row in zip(items, rows):
            record = records.get(item.id)
            if record is None:
                row.error, row.passed = "no record written", False
                continue
            score_record(row, item, record, papers_by_id[item.id])
            if record.model and model is None:
                model = record.model.name
            prompt_version = prompt_version or record.prompt_version or None

    groups = {name: [r for r in rows if r.split == name] for name in SPLITS}
    groups["all"] = rows
    splits = {
        name: SplitReport(
            split=name,
            questions=len(group),
            retrieval=retrieval_metrics(group),
            answers=None if retrieval_only else answer_metrics(group),
        )
        for name, group in groups.items()
        if group
    }
    kinds = {
        kind: SplitReport(
            split="all",
            questions=len(group),
            retrieval=retrieval_metrics(group),
            answers=None if retrieval_only else answer_metrics(group),
        )
        for kind in sorted({r.kind for r in rows})
        for group in [[r for r in rows if r.kind == kind]]
    }
    return EvalReport(
        qa_path=str(qa_path),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        retrieval_only=retrieval_only,
        split=split,
        index=_fingerprint(retriever),
        model=model,
        prompt_version=prompt_version,
        settings=settings.model_dump(mode="json", include={"retrieval", "chunking", "answer", "llm", "model"}),
        seconds=round(time.perf_counter() - started, 3),
        splits=splits,
        kinds=kinds,
        questions=rows,
    )


def _fingerprint(retriever: Any) -> str:
    try:
        return str(retriever.fingerprint())
    except Exception:  # noqa: BLE001 - a fake retriever without one
        return ""


# -------------------------------------------------------------------------------------------- output


def _fmt(value: float | int | None, kind: str = "rate") -> str:
    if value is None:
        return "-"
    if kind == "int":
        return str(int(value))
    if kind == "s":
        return f"{value:.2f}s"
    return f"{value:.3f}"


def format_report(report: EvalReport) -> str:
    """A compact table: one column per split."""
    names = [n for n in (*SPLITS, "all") if n in report.splits]
    cols = [report.splits[n] for n in names]
    lines: list[tuple[str, list[str]]] = [
        ("questions", [_fmt(c.questions, "int") for c in cols]),
        ("recall@1", [_fmt(c.retrieval.recall_at_1) for c in cols]),
        ("recall@5", [_fmt(c.retrieval.recall_at_5) for c in cols]),
        ("MRR", [_fmt(c.retrieval.mrr) for c in cols]),
        ("multi: papers@5", [_fmt(c.retrieval.multi_papers_at_5) for c in cols]),
    ]
    if not report.retrieval_only:
        answers = [c.answers or AnswerMetrics(answerable=0, unanswerable=0) for c in cols]
        lines += [
            ("accuracy", [_fmt(a.accuracy) for a in answers]),
            ("citation precision", [_fmt(a.citation_precision) for a in answers]),
            ("citation recall", [_fmt(a.citation_recall) for a in answers]),
            ("abstention (unans.)", [_fmt(a.abstention_rate) for a in answers]),
            ("false abstention", [_fmt(a.false_abstention_rate) for a in answers]),
            ("first token p50", [_fmt(a.first_token_p50_s, "s") for a in answers]),
            ("first token p95", [_fmt(a.first_token_p95_s, "s") for a in answers]),
            ("total p50", [_fmt(a.total_p50_s, "s") for a in answers]),
            ("total p95", [_fmt(a.total_p95_s, "s") for a in answers]),
            ("errors", [_fmt(a.errors, "int") for a in answers]),
        ]
    width = max(len(label) for label, _ in lines)
    out = [f"{'':<{width}}  " + "  ".join(f"{n:>8}" for n in names)]
    out += [f"{label:<{width}}  " + "  ".join(f"{v:>8}" for v in values) for label, values in lines]
    if not report.retrieval_only and report.kinds:
        by_kind = ", ".join(
            f"{kind} {_fmt(k.answers.abstention_rate if kind == 'unanswerable' else k.answers.accuracy)} ({k.questions})"
            for kind, k in report.kinds.items()
            if k.answers
        )
        out.append(f"by kind (accuracy; unanswerable: abstention): {by_kind}")
    missed = [r.id for r in report.questions if r.answerable and r.hit_rank is None]
    failed = [r.id for r in report.questions if r.passed is False]
    if missed:
        out.append(f"not retrieved (top {max(PAPERS_AT, int(report.settings.get('retrieval', {}).get('k', 5)))}): {', '.join(missed)}")
    if failed:
        out.append(f"answers failed: {', '.join(failed)}")
    out.append(f"index {report.index or '?'}; {report.seconds:.1f}s")
    return "\n".join(out)


@click.command("eval")
@click.argument("qa_path", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--retrieval-only", is_flag=True, help="Score retrieval only (no model is loaded).")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), help="Write the full report (per question) as JSON to this file.")
@click.option("--split", type=click.Choice(SPLITS), help="Only this split's questions (default: all, reported per split).")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), help="Keep the batch questions/answers .jsonl here.")
@click.pass_context
def eval_command(
    ctx: click.Context,
    qa_path: Path | None,
    retrieval_only: bool,
    json_out: Path | None,
    split: str | None,
    out_dir: Path | None,
) -> None:
    """Score retrieval and cited answers on a question set (default: eval/qa_dev.jsonl)."""
    settings = Settings(**(ctx.obj or {}))
    try:
        report = evaluate(
            settings, qa_path or DEFAULT_QA_PATH, retrieval_only=retrieval_only, split=split, out_dir=out_dir, progress=True
        )
    except RagError as e:
        click.echo(f"error: {e}", err=True)
        ctx.exit(e.exit_code)
        return
    click.echo(format_report(report))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(report.model_dump_json(indent=2), encoding="utf-8")
        click.echo(f"report written to {json_out}")
