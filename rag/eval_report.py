"""The text table `rag eval` prints: one column per split, then the questions missed or failed."""

from __future__ import annotations

from rag.eval_metrics import PAPERS_AT, SPLITS, AnswerMetrics, EvalReport


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
            ("multi: all cited", [_fmt(a.multi_all_cited) for a in answers]),
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
