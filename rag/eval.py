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

This module runs an evaluation and holds the `rag eval` command; the records and metric functions are in
rag.eval_metrics, the printed table in rag.eval_report.

Nothing heavy is imported at module level: models and the store load only when `evaluate` runs.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from rag.config import PROJECT_ROOT, Settings
from rag.errors import ConfigError, RagError
from rag.eval_metrics import (  # noqa: F401 - citation_scores, missing_strings, percentile: re-exported
    PAPERS_AT,
    SPLITS,
    EvalReport,
    Loc,
    QAItem,
    QuestionResult,
    SplitReport,
    answer_metrics,
    citation_scores,
    group_papers,
    hit_rank,
    missing_strings,
    papers_found,
    passage_locations,
    percentile,
    retrieval_metrics,
    score_record,
)
from rag.eval_report import format_report
from rag.types import BatchRecord

if TYPE_CHECKING:  # pragma: no cover
    from rag.retrieval import Retriever

logger = logging.getLogger(__name__)

DEFAULT_QA_PATH = PROJECT_ROOT / "eval" / "qa_dev.jsonl"


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


# ------------------------------------------------------------------------------------------- command


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
