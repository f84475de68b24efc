"""rag eval: the metric functions on hand-made records (exact values), and evaluate() end to end on a few questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag import eval as rag_eval
from rag.errors import ConfigError
from rag.eval import (
    QAItem,
    QuestionResult,
    answer_metrics,
    citation_scores,
    evaluate,
    format_report,
    group_papers,
    hit_rank,
    load_qa,
    missing_strings,
    papers_found,
    percentile,
    retrieval_metrics,
    score_record,
)
from rag.prompts import NOT_IN_CORPUS
from rag.types import Answer, BatchRecord, Citation, Timings

A, B, C, D = ("a.txt", 1), ("a.txt", 5), ("b.txt", 3), ("c.txt", 9)
DUP = ("d.txt", 2)  # the same abstract as C, found in a second file


# ------------------------------------------------------------------------------------------ metrics


def test_percentile_interpolates_like_numpy():
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0) == 1.0


def test_hit_rank_counts_any_location_of_a_passage():
    ranked = [{A}, {C, DUP}, {D}]
    assert hit_rank(ranked, {DUP}) == 2  # the duplicate's second location matches
    assert hit_rank(ranked, {B, D}) == 3
    assert hit_rank(ranked, {B}) is None
    assert hit_rank([], {A}) is None


def test_papers_are_grouped_and_counted_once():
    paper_of = {C: "p3", DUP: "p3", A: "p1"}
    papers = group_papers({A, C, DUP}, paper_of)
    assert sorted(map(sorted, papers)) == [[A], [C, DUP]]
    assert papers_found([{C, DUP}, {B}], papers) == 0.5
    assert papers_found([{B}] * 5 + [{A}], papers) == 0.0  # A is 6th: outside the top 5
    assert papers_found([{A}], [{B}]) == 0.0
    assert papers_found([{A}], []) is None
    assert group_papers({B}, {}) == [{B}]  # unknown location: a paper of its own


def test_missing_strings_case_and_space_insensitive():
    answer = "It reaches 75%  sparsity with\nHyperCLOVA X [1]."
    assert missing_strings(answer, ["75% sparsity", "hyperclova x"]) == []
    assert missing_strings(answer, ["75%", "EXAONE"]) == ["EXAONE"]


def test_citation_scores():
    papers = [{A}, {C, DUP}]
    assert citation_scores([A, DUP, D], papers) == (2, 1.0)
    assert citation_scores([D, D], papers) == (0, 0.0)
    assert citation_scores([A, A], papers) == (2, 0.5)
    assert citation_scores([], papers) == (0, 0.0)


def _row(id, answerable=True, kind="figure", hit=None, found=None, split="tune") -> QuestionResult:
    return QuestionResult(
        id=id, split=split, kind=kind, answerable=answerable, question="?", hit_rank=hit, papers_found=found
    )


def test_retrieval_metrics_exact():
    rows = [
        _row("q1", hit=1),
        _row("q2", hit=2),
        _row("q3", hit=None),
        _row("q4", kind="multi", hit=4, found=0.5),
        _row("q5", answerable=False),  # not scored
    ]
    m = retrieval_metrics(rows)
    assert m.questions == 4
    assert m.recall_at_1 == 0.25
    assert m.recall_at_5 == 0.75
    assert m.mrr == pytest.approx((1 + 0.5 + 0 + 0.25) / 4)
    assert (m.multi_questions, m.multi_papers_at_5) == (1, 0.5)
    empty = retrieval_metrics([_row("u", answerable=False)])
    assert (empty.questions, empty.recall_at_5, empty.mrr) == (0, None, None)


def _citation(n: int, loc: tuple[str, int]) -> Citation:
    return Citation(n=n, source=loc[0], line=loc[1], paper_id="p", quote="q", score=0.9)


def _record(id: str, answer: str, abstained=False, cites=(), ttft=None, total=1.0, error=None) -> BatchRecord:
    return BatchRecord(
        id=id,
        question="?",
        standalone_question="?",
        answer=answer,
        abstained=abstained,
        citations=[_citation(i, loc) for i, loc in enumerate(cites, start=1)],
        timings=Timings(first_token_s=ttft, total_s=total),
        error=error,
    )


def _item(id: str, answerable=True, expected=(), must=(), kind="figure") -> QAItem:
    return QAItem(
        id=id,
        question="?",
        answerable=answerable,
        kind=kind,
        expected_sources=[{"source": s, "line": n} for s, n in expected],
        must_contain=list(must),
    )


def test_answer_metrics_on_hand_made_records():
    cases = [
        # answerable, right, cites the expected paper twice (once per location) and one wrong paper
        (_item("q1", expected=[C, DUP], must=["75%"]), _record("q1", "It is 75% [1][2].", cites=[C, DUP, D], ttft=0.5, total=2.0)),
        # answerable, wrong figure, cites the right paper
        (_item("q2", expected=[A], must=["32B", "2.4B"]), _record("q2", "Sizes 32B and 7B [1].", cites=[A], ttft=1.5, total=3.0)),
        # answerable, abstained: fails, counts as false abstention, left out of the citation metrics
        (_item("q3", expected=[B], must=["x"]), _record("q3", NOT_IN_CORPUS, abstained=True, total=0.1)),
        # multi: both strings present, one of two papers cited
        (_item("q4", expected=[A, B], must=["EXAONE", "HyperCLOVA"], kind="multi"),
         _record("q4", "EXAONE [1] and HyperCLOVA X.", cites=[A], ttft=1.0, total=4.0)),
        # unanswerable: abstained (good) / answered (bad)
        (_item("u1", answerable=False), _record("u1", NOT_IN_CORPUS, abstained=True, total=0.2)),
        (_item("u2", answerable=False), _record("u2", "Made up [1].", cites=[D], ttft=2.0, total=5.0)),
        # an error record: fails, is not an abstention, has no latency
        (_item("q5", expected=[A], must=["y"]), _record("q5", "", error="boom", total=0.0)),
    ]
    paper_of = {C: "p3", DUP: "p3"}
    rows = []
    for item, record in cases:
        row = QuestionResult(id=item.id, split="tune", kind=item.kind, answerable=item.answerable, question="?")
        score_record(row, item, record, group_papers(item.expected, paper_of))
        rows.append(row)
    by_id = {r.id: r for r in rows}
    assert [r.passed for r in rows] == [True, False, False, True, True, False, False]
    assert by_id["q2"].missing == ["2.4B"]
    assert by_id["q3"].missing == ["x"] and by_id["q3"].citations_correct is None
    assert (by_id["q1"].citations_correct, by_id["q1"].citation_recall) == (2, 1.0)
    assert by_id["q1"].citations == ["b.txt:3", "d.txt:2", "c.txt:9"]

    m = answer_metrics(rows)
    assert (m.answerable, m.unanswerable, m.errors) == (5, 2, 1)
    assert m.accuracy == 2 / 5
    assert m.citations == 5  # q1: 3, q2: 1, q4: 1 (q3 abstained, q5 errored, u2 unanswerable)
    assert m.citation_precision == 4 / 5
    assert m.citation_recall == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert m.multi_all_cited == 0.0  # q4 names both papers but cites one of them
    assert m.abstention_rate == 0.5
    assert m.false_abstention_rate == 1 / 5
    assert m.first_token_p50_s == 1.25  # 0.5, 1.0, 1.5, 2.0
    assert m.first_token_p95_s == pytest.approx(1.925)
    assert m.total_p50_s == 2.5  # 0.1, 0.2, 2.0, 3.0, 4.0, 5.0 (the error record has no latency)


def test_multi_all_cited_counts_lists_complete_by_their_citations():
    def row(id: str, recall: float | None, abstained: bool = False, kind: str = "multi") -> QuestionResult:
        return QuestionResult(id=id, split="tune", kind=kind, answerable=True, question="?", abstained=abstained,
                              passed=False, citation_recall=recall)

    rows = [
        row("m1", 1.0),  # every right paper cited, though a must_contain string is missing: complete by citations
        row("m2", 0.5),  # one of two cited
        row("m3", None, abstained=True),  # refused: counts as incomplete
        row("f1", 1.0, kind="figure"),  # not a list question: not counted
    ]
    metrics = answer_metrics(rows)
    assert metrics.multi_all_cited == pytest.approx(1 / 3)
    assert metrics.accuracy == 0.0
    assert answer_metrics([row("f1", 1.0, kind="figure")]).multi_all_cited is None


def test_load_qa_rejects_a_bad_line(tmp_path: Path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"id": "q1", "question": "?", "answerable": true, "kind": "figure"}\n{"id": "q2"}\n')
    with pytest.raises(ConfigError, match=r"qa.jsonl:2"):
        load_qa(path)


# ------------------------------------------------------------------------------------- end to end

DEV_IDS = ("q001", "q005", "q019", "q061", "q076")  # figure, figure, duplicate abstract, multi, + one unanswerable


@pytest.fixture(scope="module")
def small_qa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [json.loads(line) for line in rag_eval.DEFAULT_QA_PATH.read_text().splitlines() if line.strip()]
    picked = [r for r in rows if r["id"] in DEV_IDS]
    picked.append(next(r for r in rows if not r["answerable"] and r["split"] == "holdout"))
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return path


def test_evaluate_retrieval_only_on_the_real_index(ingested_settings, retriever, small_qa):
    report = evaluate(ingested_settings, small_qa, retrieval_only=True, retriever=retriever)
    rows = {r.id: r for r in report.questions}
    assert {"q001", "q005", "q019", "q061"} <= set(rows)
    assert rows["q001"].hit_rank == 1 and rows["q005"].hit_rank == 1
    assert rows["q019"].hit_rank == 1  # found through either of its two locations
    assert rows["q061"].papers_found == 1.0
    assert all(r.hit_rank is None and r.papers_found is None for r in rows.values() if not r.answerable)
    assert all(len(r.retrieved) == max(5, ingested_settings.retrieval.k) for r in rows.values())
    assert set(report.splits) == {"tune", "holdout", "all"}
    assert report.splits["all"].questions == len(rows)
    assert report.splits["tune"].retrieval.recall_at_5 == 1.0
    assert report.splits["all"].answers is None and report.index
    assert "recall@5" in format_report(report)
    assert type(report).model_validate_json(report.model_dump_json()) == report

    only_holdout = evaluate(ingested_settings, small_qa, retrieval_only=True, split="holdout", retriever=retriever)
    assert set(only_holdout.splits) == {"holdout", "all"}
    assert {r.split for r in only_holdout.questions} == {"holdout"}


class ScriptedAnswerer:
    """Answers through the same run_batch path as the real Assistant: right for q001, abstains on the rest."""

    def __init__(self):
        self.asked: list[str] = []

    def ask(self, question: str) -> Answer:
        self.asked.append(question)
        if "sparsity" in question:
            cite = Citation(n=1, source="001_0b21518f7ee75860.txt", line=13, paper_id="p", quote="q", score=0.9)
            return Answer(question=question, standalone_question=question, answer="Up to 75% sparsity [1].",
                          abstained=False, citations=[cite], timings=Timings(first_token_s=0.4, total_s=1.0))
        return Answer(question=question, standalone_question=question, answer=NOT_IN_CORPUS, abstained=True,
                      timings=Timings(total_s=0.1))


def test_evaluate_answers_go_through_run_batch(ingested_settings, retriever, small_qa, tmp_path):
    answerer = ScriptedAnswerer()
    report = evaluate(ingested_settings, small_qa, answerer=answerer, retriever=retriever, out_dir=tmp_path / "work")
    assert len(answerer.asked) == report.splits["all"].questions
    assert (tmp_path / "work" / "answers.jsonl").is_file()  # the batch output, kept where asked
    rows = {r.id: r for r in report.questions}
    assert rows["q001"].passed is True and rows["q001"].citations == ["001_0b21518f7ee75860.txt:13"]
    assert rows["q005"].passed is False and rows["q005"].abstained is True
    assert all(r.passed for r in rows.values() if not r.answerable)
    a = report.splits["all"].answers
    assert a.accuracy == 1 / 4 and a.citation_precision == 1.0 and a.citation_recall == 1.0
    assert a.abstention_rate == 1.0 and a.false_abstention_rate == 3 / 4
    assert a.first_token_p50_s == 0.4 and a.errors == 0
    assert report.kinds["unanswerable"].answers.abstention_rate == 1.0
    assert report.kinds["multi"].retrieval.multi_papers_at_5 == 1.0
    assert "by kind" in format_report(report)


def test_eval_command(ingested_settings, retriever, small_qa, tmp_path, monkeypatch):
    real = rag_eval.evaluate
    monkeypatch.setattr(rag_eval, "evaluate", lambda *a, **kw: real(*a, retriever=retriever, **kw))
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        rag_eval.eval_command,
        [str(small_qa), "--retrieval-only", "--json", str(out), "--split", "tune"],
        obj={"data_dir": ingested_settings.data_dir},
    )
    assert result.exit_code == 0, result.output
    assert "recall@5" in result.output and "holdout" not in result.output.splitlines()[0]
    data = json.loads(out.read_text())
    assert data["split"] == "tune" and data["questions"] and "hit_rank" in data["questions"][0]

    missing = CliRunner().invoke(rag_eval.eval_command, [str(tmp_path / "nope.jsonl"), "--retrieval-only"],
                                 obj={"data_dir": ingested_settings.data_dir})
    assert missing.exit_code == ConfigError.exit_code and "cannot read the question set" in missing.output
