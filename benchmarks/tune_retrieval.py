#!/usr/bin/env python
"""Grid search of the retrieval settings on the TUNE split (recall@5, then multi-paper papers@5, MRR, recall@1).

    python benchmarks/tune_retrieval.py [--out benchmarks/results/tuning.json] [--work /tmp/rag-tune]

For each chunking (max_words, overlap) the bundled corpus is ingested once into WORK/<chunking>; then
every fusion setting (lexical/dense weight, rrf_k, candidates, k) is scored with `rag.eval.evaluate`
on the same index, through the real Retriever (query embeddings are cached, nothing else is).
The holdout split is not looked at here: score the chosen setting on it with `rag eval --retrieval-only`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.config import ChunkingSettings, RetrievalSettings, Settings  # noqa: E402
from rag.embedding import Embedder  # noqa: E402
from rag.eval import DEFAULT_QA_PATH, evaluate  # noqa: E402

CHUNKINGS = [(170, 1), (120, 1), (90, 1), (60, 1), (250, 1), (400, 0), (120, 0), (170, 2)]
LEXICAL_WEIGHTS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]  # dense weight stays 1.0: only the ratio matters
RRF_KS = [5, 20, 60, 120]
CANDIDATES = [15, 30, 60]


class CachedEmbedder(Embedder):
    """Embeds each distinct text once (the grid asks the same questions many times)."""

    def __init__(self):
        super().__init__()
        self._cache: dict[str, object] = {}

    def embed(self, texts):  # type: ignore[override]
        import numpy as np

        missing = [t for t in texts if t not in self._cache]
        if missing:
            for text, vector in zip(missing, super().embed(missing)):
                self._cache[text] = vector
        return np.stack([self._cache[t] for t in texts]) if texts else super().embed(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tuning.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rag-tune"))
    parser.add_argument("--qa", type=Path, default=DEFAULT_QA_PATH)
    parser.add_argument("--quick", action="store_true", help="Default chunking only.")
    args = parser.parse_args()

    from rag.ingest import ingest
    from rag.retrieval import Retriever

    embedder = CachedEmbedder()
    results = []
    started = time.perf_counter()
    chunkings = CHUNKINGS[:1] if args.quick else CHUNKINGS
    for max_words, overlap in chunkings:
        chunking = ChunkingSettings(max_words=max_words, overlap_sentences=overlap)
        base = Settings(data_dir=args.work / f"w{max_words}-o{overlap}", chunking=chunking)
        summary = ingest(base, embedder=embedder)
        retriever = Retriever(base, embedder=embedder)
        chunks = summary.chunks_added + summary.chunks_updated + summary.chunks_unchanged
        for lexical, rrf_k, candidates in itertools.product(LEXICAL_WEIGHTS, RRF_KS, CANDIDATES):
            retrieval = RetrievalSettings(lexical_weight=lexical, dense_weight=1.0, rrf_k=rrf_k, candidates=candidates)
            settings = base.model_copy(update={"retrieval": retrieval})
            retriever.settings = settings  # same index and embedder; only the fusion knobs change
            report = evaluate(settings, args.qa, retrieval_only=True, split="tune", retriever=retriever)
            r = report.splits["tune"].retrieval
            results.append(
                {
                    "max_words": max_words,
                    "overlap": overlap,
                    "chunks": chunks,
                    "lexical_weight": lexical,
                    "rrf_k": rrf_k,
                    "candidates": candidates,
                    "recall_at_1": r.recall_at_1,
                    "recall_at_5": r.recall_at_5,
                    "mrr": r.mrr,
                    "multi_papers_at_5": r.multi_papers_at_5,
                    "missed": [q.id for q in report.questions if q.answerable and (q.hit_rank or 99) > 5],
                }
            )
        # dense-only and lexical-only references for this chunking
        for dense, lexical in ((1.0, 0.0), (0.0, 1.0)):
            settings = base.model_copy(update={"retrieval": RetrievalSettings(dense_weight=dense, lexical_weight=lexical)})
            retriever.settings = settings
            r = evaluate(settings, args.qa, retrieval_only=True, split="tune", retriever=retriever).splits["tune"].retrieval
            print(f"  w{max_words}-o{overlap} {'dense' if dense else 'lexical'} only: r@1 {r.recall_at_1:.3f} r@5 {r.recall_at_5:.3f} mrr {r.mrr:.3f}")
        best = max((x for x in results if x["max_words"] == max_words and x["overlap"] == overlap), key=_key)
        print(f"w{max_words}-o{overlap} ({chunks} chunks): best {_row(best)}  [{time.perf_counter() - started:.0f}s]", flush=True)

    results.sort(key=_key, reverse=True)
    print("\ntop 15 (tune split):")
    for x in results[:15]:
        print(f"  w{x['max_words']}-o{x['overlap']} {_row(x)}")
    default = next(
        (x for x in results if (x["max_words"], x["overlap"], x["lexical_weight"], x["rrf_k"], x["candidates"]) == (170, 1, 1.0, 60, 30)),
        None,
    )
    if default:
        print(f"\ncurrent default: w170-o1 {_row(default)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"split": "tune", "results": results}, indent=1), encoding="utf-8")
    print(f"{len(results)} settings in {time.perf_counter() - started:.0f}s; written to {args.out}")


def _key(x: dict) -> tuple:
    """recall@5 first, then the share of multi-paper questions' papers in the top 5, then MRR, then recall@1."""
    multi = x["multi_papers_at_5"] if x["multi_papers_at_5"] is not None else 0.0
    return (round(x["recall_at_5"], 6), round(multi, 6), round(x["mrr"], 6), round(x["recall_at_1"], 6))


def _row(x: dict) -> str:
    return (
        f"lex {x['lexical_weight']:.2f} rrf_k {x['rrf_k']:>3} cand {x['candidates']:>2}: "
        f"r@1 {x['recall_at_1']:.3f} r@5 {x['recall_at_5']:.3f} mrr {x['mrr']:.3f} missed {','.join(x['missed']) or '-'}"
    )


if __name__ == "__main__":
    main()
