#!/usr/bin/env python3
"""Measure the answering targets on eval/qa_dev.jsonl: answer accuracy (must_contain present), citation
precision, abstention on unanswerable questions, false abstention, and time to first token.

Usage: PYTHONPATH=. python benchmarks/eval_answers.py [--qa eval/qa_dev.jsonl] [--split tune|holdout]
       [--data-dir DIR] [--out results.jsonl] [--ingest]
Uses the index in --data-dir (RAG_DATA_DIR by default); --ingest builds it first.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from rag.answer import Assistant
from rag.config import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qa", type=Path, default=Path("eval/qa_dev.jsonl"))
    parser.add_argument("--split", choices=["tune", "holdout"], default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--ingest", action="store_true")
    parser.add_argument("--ids", default="", help="comma-separated ids to run only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    if args.ingest:
        from rag.ingest import ingest

        print(ingest(settings), file=sys.stderr)
    rows = [json.loads(line) for line in args.qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.split:
        rows = [r for r in rows if r["split"] == args.split]
    if args.ids:
        wanted = set(args.ids.split(","))
        rows = [r for r in rows if r["id"] in wanted]

    assistant = Assistant(settings)
    started = time.perf_counter()
    assistant.warm_up()
    print(f"warm-up {time.perf_counter() - started:.1f}s", file=sys.stderr)

    results = []
    out = args.out.open("w", encoding="utf-8") if args.out else None
    for row in rows:
        answer = assistant.ask(row["question"])
        expected = {(e["source"], e["line"]) for e in row["expected_sources"]}
        locations = {p.paper_id: {(loc.source, loc.line) for loc in (p.locations or [])} | {(p.source, p.line)} for p in answer.passages}
        correct_citations = [c for c in answer.citations if locations.get(c.paper_id, {(c.source, c.line)}) & expected]
        text = answer.answer.lower()
        result = {
            "id": row["id"], "kind": row["kind"], "split": row["split"], "answerable": row["answerable"],
            "abstained": answer.abstained,
            "correct": all(m.lower() in text for m in row["must_contain"]) if row["answerable"] else answer.abstained,
            "citations": len(answer.citations), "correct_citations": len(correct_citations),
            "cited_expected": len({(c.source, c.line) for c in correct_citations}),
            "expected": len(expected),
            "first_token_s": answer.timings.first_token_s, "total_s": answer.timings.total_s,
            "prompt_tokens": answer.timings.prompt_tokens,
            "answer": answer.answer, "unsupported": answer.unsupported,
        }
        results.append(result)
        flag = "ok " if result["correct"] else "BAD"
        print(f"{flag} {row['id']} {row['kind']:<12} ttft={answer.timings.first_token_s} p={answer.timings.prompt_tokens} "
              f"cit={result['correct_citations']}/{result['citations']} | {answer.answer[:150]}", file=sys.stderr)
        if out:
            out.write(json.dumps(result) + "\n")
    if out:
        out.close()

    answerable = [r for r in results if r["answerable"]]
    unanswerable = [r for r in results if not r["answerable"]]
    cited = sum(r["citations"] for r in answerable)
    ttfts = sorted(r["first_token_s"] for r in results if r["first_token_s"] is not None)
    summary = {
        "questions": len(results),
        "answer_accuracy": round(sum(r["correct"] for r in answerable) / max(1, len(answerable)), 3),
        "citation_precision": round(sum(r["correct_citations"] for r in answerable) / max(1, cited), 3),
        "multi_paper_recall": round(
            sum(r["cited_expected"] for r in answerable if r["kind"] == "multi")
            / max(1, sum(r["expected"] for r in answerable if r["kind"] == "multi")), 3),
        "abstention_unanswerable": round(sum(r["abstained"] for r in unanswerable) / max(1, len(unanswerable)), 3),
        "false_abstention": round(sum(r["abstained"] for r in answerable) / max(1, len(answerable)), 3),
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p90_s": round(ttfts[int(0.9 * (len(ttfts) - 1))], 3) if ttfts else None,
        "prompt_tokens_p50": statistics.median([r["prompt_tokens"] for r in results if r["prompt_tokens"]] or [0]),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
