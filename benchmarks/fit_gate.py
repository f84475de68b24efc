"""Fit the answerability gate (rag/gate.json) on the labelled question sets, with cross-validation.

For every question of the dev set and the blind sets (never blind 8 or 9, scored last, nor blind 10, held back), the
retriever's passages are read and rag.answerability.gate_signals computed; a logistic regression (scikit-learn,
a development tool here: the runtime only takes a dot product) learns P(answerable) from them. Reported, from
out-of-fold predictions (5 folds, stratified): abstention on unanswerable questions and false abstention on
answerable ones, for the fitted gate at the chosen threshold and for the hand-set rules it replaces
(min_relevance + unanswerable_reason) on the same questions.

    .venv/bin/python benchmarks/fit_gate.py [--write]      # --write saves rag/gate.json

Needs the bundled corpus indexed (`make index`). No model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.answerability import SIGNALS, gate_signals  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.gate import GATE_FILE  # noqa: E402
from rag.question import analyse  # noqa: E402
from rag.retrieval import Retriever  # noqa: E402

HELD_OUT = {"qa_blind8.jsonl", "qa_blind9.jsonl", "qa_blind10.jsonl", "qa_blind11.jsonl", "qa_blind12.jsonl",
            "qa_blind13.jsonl", "qa_blind14.jsonl",
            "qa_blind15.jsonl"}
MAX_FALSE_ABSTENTION = 0.05  # the threshold is the highest whose out-of-fold false abstention stays within this


def labelled_questions() -> list[dict]:
    items = []
    for path in sorted((ROOT / "eval").glob("qa_*.jsonl")):
        if path.name in HELD_OUT:
            continue
        items += [json.loads(line) | {"set": path.name} for line in path.read_text().splitlines() if line.strip()]
    return items


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="save the fitted gate to rag/gate.json")
    args = parser.parse_args()
    settings = Settings()
    retriever = Retriever(settings)
    items = labelled_questions()
    X, y, rules = [], [], []
    for item in items:
        question = analyse(item["question"])
        passages = retriever.search(question.text, k=settings.retrieval.k)
        signals = gate_signals(question, passages)
        X.append([signals[name] for name in SIGNALS])
        y.append(int(item["answerable"]))
        rules.append(signals["similarity"] < settings.answer.min_relevance or signals["rule_refuses"] > 0)
    X, y, rules = np.asarray(X), np.asarray(y), np.asarray(rules)
    mean, scale = X.mean(axis=0), X.std(axis=0) + 1e-9
    Z = (X - mean) / scale

    def model() -> LogisticRegression:
        return LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)

    oof = np.zeros(len(y))
    for train, test in StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(Z, y):
        oof[test] = model().fit(Z[train], y[train]).predict_proba(Z[test])[:, 1]

    def rates(refused: np.ndarray) -> tuple[float, float]:
        return float(refused[y == 0].mean()), float(refused[y == 1].mean())

    candidates = sorted(set(np.round(oof, 3)))
    threshold = max((t for t in candidates if rates(oof < t)[1] <= MAX_FALSE_ABSTENTION), default=0.5)
    gate_abst, gate_false = rates(oof < threshold)
    rule_abst, rule_false = rates(rules)
    print(f"{len(y)} questions ({int((y == 0).sum())} unanswerable) from {len({i['set'] for i in items})} sets")
    print(f"hand-set rules:            abstention {rule_abst:.3f}  false abstention {rule_false:.3f}")
    print(f"fitted gate (5-fold CV):   abstention {gate_abst:.3f}  false abstention {gate_false:.3f}  threshold {threshold}")
    final = model().fit(Z, y)
    for name, weight in sorted(zip(SIGNALS, final.coef_[0]), key=lambda t: -abs(t[1])):
        print(f"  {name:16s} {weight:+.3f}")
    if args.write:
        GATE_FILE.write_text(json.dumps({
            "signals": list(SIGNALS),
            "mean": mean.round(6).tolist(),
            "scale": scale.round(6).tolist(),
            "weights": final.coef_[0].round(6).tolist(),
            "bias": round(float(final.intercept_[0]), 6),
            "threshold": float(threshold),
            "fitted": {
                "on": sorted({i["set"] for i in items}), "questions": len(y), "date": date.today().isoformat(),
                "cv_abstention": round(gate_abst, 3), "cv_false_abstention": round(gate_false, 3),
                "rules_abstention": round(rule_abst, 3), "rules_false_abstention": round(rule_false, 3),
            },
        }, indent=2) + "\n")
        print(f"written {GATE_FILE}")


if __name__ == "__main__":
    main()
