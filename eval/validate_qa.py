#!/usr/bin/env python3
"""Validate eval/qa_dev.jsonl against the corpus. Standard library only.

Usage: python3 eval/validate_qa.py [QA_FILE] [--corpus DIR]

Checks, per line: valid JSON object with the expected keys and types; unique ids; kind and split
in their allowed sets; every expected (source, line) exists and is an abstract line (an
`Abstract:` line, or in a listing page a long paragraph preceded by a blank line and a title line);
an abstract that occurs in several places is listed at all of them; every must_contain string
occurs (case-insensitively) in at least one expected abstract line; multi-paper questions cite
>= 2 distinct abstracts and each of them contains one of the must_contain strings;
unanswerable questions have empty expected_sources and must_contain.
Prints counts per kind and split. Exit status 1 if any error.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

KINDS = {"figure", "method", "dataset", "paraphrase", "multi", "unanswerable"}
SPLITS = {"tune", "holdout"}
KEYS = {"id", "question", "answerable", "kind", "expected_sources", "must_contain", "split"}
MIN_ABSTRACT_CHARS = 200  # listing-page abstracts are one long paragraph; titles/metadata are short


def load_corpus(corpus: Path) -> dict[str, list[str]]:
    files = {p.name: p.read_text(encoding="utf-8").split("\n") for p in sorted(corpus.glob("*.txt"))}
    if not files:
        sys.exit(f"no .txt files in {corpus}")
    return files


def is_abstract_line(lines: list[str], n: int) -> bool:
    """n is 1-based."""
    text = lines[n - 1]
    if text.startswith("Abstract:"):
        return len(text) > len("Abstract:") + 20
    if len(text) < MIN_ABSTRACT_CHARS or text.lstrip().startswith(("•", "·")):
        return False
    # listing page: title line, blank line, abstract paragraph
    return n >= 3 and lines[n - 2].strip() == "" and lines[n - 3].strip() != ""


def abstract_text(line: str) -> str:
    return line[len("Abstract:"):].strip() if line.startswith("Abstract:") else line.strip()


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser()
    ap.add_argument("qa_file", nargs="?", default=str(here / "qa_dev.jsonl"))
    ap.add_argument("--corpus", default=str(here.parent / "corpus"))
    args = ap.parse_args()

    corpus = load_corpus(Path(args.corpus))
    # every abstract's text -> all its locations, to check that duplicated abstracts are cited everywhere
    locations: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for fn, lines in corpus.items():
        for n in range(1, len(lines) + 1):
            if is_abstract_line(lines, n):
                locations[abstract_text(lines[n - 1])].add((fn, n))

    errors: list[str] = []
    warnings: list[str] = []
    ids: set[str] = set()
    per_kind_split: Counter = Counter()
    papers: set[str] = set()
    files_used: set[str] = set()
    n_rows = 0

    for lineno, raw in enumerate(Path(args.qa_file).read_text(encoding="utf-8").splitlines(), 1):
        where = f"line {lineno}"
        if not raw.strip():
            errors.append(f"{where}: blank line")
            continue
        try:
            q = json.loads(raw)
        except json.JSONDecodeError as e:
            errors.append(f"{where}: invalid JSON ({e})")
            continue
        if not isinstance(q, dict):
            errors.append(f"{where}: not a JSON object")
            continue
        n_rows += 1
        if set(q) != KEYS:
            errors.append(f"{where}: keys {sorted(q)} != {sorted(KEYS)}")
            continue
        qid = q["id"]
        where = f"line {lineno} ({qid})"
        if not isinstance(qid, str) or not qid:
            errors.append(f"{where}: bad id")
        elif qid in ids:
            errors.append(f"{where}: duplicate id")
        ids.add(qid)
        if not isinstance(q["question"], str) or not q["question"].strip():
            errors.append(f"{where}: empty question")
        else:
            words = len(q["question"].split())
            if not 8 <= words <= 25:
                warnings.append(f"{where}: question has {words} words (aim for 8-25)")
        if q["kind"] not in KINDS:
            errors.append(f"{where}: kind {q['kind']!r} not in {sorted(KINDS)}")
        if q["split"] not in SPLITS:
            errors.append(f"{where}: split {q['split']!r} not in {sorted(SPLITS)}")
        if not isinstance(q["answerable"], bool):
            errors.append(f"{where}: answerable must be true/false")
        srcs, must = q["expected_sources"], q["must_contain"]
        if not isinstance(srcs, list) or not isinstance(must, list) or not all(isinstance(m, str) and m.strip() for m in must):
            errors.append(f"{where}: expected_sources and must_contain must be lists (of objects / non-empty strings)")
            continue
        per_kind_split[(q["kind"], q["split"])] += 1

        if q["answerable"] is False or q["kind"] == "unanswerable":
            if q["answerable"] is not False or q["kind"] != "unanswerable":
                errors.append(f"{where}: kind 'unanswerable' and answerable=false must go together")
            if srcs or must:
                errors.append(f"{where}: unanswerable question must have empty expected_sources and must_contain")
            continue

        if not srcs:
            errors.append(f"{where}: answerable question without expected_sources")
        if not must:
            errors.append(f"{where}: answerable question without must_contain")
        cited_texts: dict[str, set[tuple[str, int]]] = defaultdict(set)
        for s in srcs:
            if not isinstance(s, dict) or set(s) != {"source", "line"}:
                errors.append(f"{where}: expected source {s!r} must be {{source, line}}")
                continue
            fn, n = s["source"], s["line"]
            if fn not in corpus:
                errors.append(f"{where}: unknown source file {fn!r}")
                continue
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(corpus[fn]):
                errors.append(f"{where}: line {n!r} out of range for {fn}")
                continue
            if not is_abstract_line(corpus[fn], n):
                errors.append(f"{where}: {fn}:{n} is not an abstract line: {corpus[fn][n - 1][:80]!r}")
                continue
            text = abstract_text(corpus[fn][n - 1])
            cited_texts[text].add((fn, n))
            files_used.add(fn)
        for text, cited in cited_texts.items():
            papers.add(text)
            missing = locations[text] - cited
            if missing:
                errors.append(f"{where}: abstract also appears at {sorted(missing)}; list every location")
        lowered = [t.lower() for t in cited_texts]
        for m in must:
            if not any(m.lower() in t for t in lowered):
                errors.append(f"{where}: must_contain {m!r} not found in any expected abstract")
        if q["kind"] == "multi":
            if len(cited_texts) < 2:
                errors.append(f"{where}: multi question must cite at least 2 distinct abstracts")
            for t in lowered:
                if not any(m.lower() in t for m in must):
                    errors.append(f"{where}: a cited abstract contains none of the must_contain strings")

    for w in warnings:
        print("WARN ", w)
    for e in errors:
        print("ERROR", e)

    kinds = sorted({k for k, _ in per_kind_split})
    print(f"\n{n_rows} questions, {len(papers)} distinct abstracts cited, files used: {sorted(files_used)}")
    print(f"{'kind':<14}{'tune':>6}{'holdout':>9}{'total':>7}")
    for k in kinds:
        t, h = per_kind_split[(k, 'tune')], per_kind_split[(k, 'holdout')]
        print(f"{k:<14}{t:>6}{h:>9}{t + h:>7}")
    t = sum(v for (k, s), v in per_kind_split.items() if s == "tune")
    h = sum(v for (k, s), v in per_kind_split.items() if s == "holdout")
    print(f"{'all':<14}{t:>6}{h:>9}{t + h:>7}   holdout share {h / max(1, t + h):.0%}")
    print("OK" if not errors else f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
