"""Ways to find paraphrased papers, measured against today's retrieval (recall@5, MRR).

On every answerable question of the dev set and the blind sets (never the held-out ones), for the paraphrase
questions and for all: (a) dense pseudo-relevance feedback: the question vector plus alpha times the mean of the
top three chunks' vectors, searched again; (b) the top 15 papers re-ranked by reciprocal-rank fusion of the
retriever's order with the order of their best sentence's cosine to the question (weight w); with --hyde,
(c) hypothetical-document search (HyDE): the configured chat model writes one abstract-style sentence that
answers the question, and the question vector plus that sentence's vector (weight 1 or 1/2) is searched.

    .venv/bin/python benchmarks/paraphrase_retrieval.py [--hyde]   # needs `make index`; --hyde loads the model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.chat_model import chat_model  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.context import paper_texts  # noqa: E402
from rag.retrieval import Retriever  # noqa: E402
from rag.scoring import SentenceScorer  # noqa: E402

HELD_OUT = {"qa_blind8.jsonl", "qa_blind9.jsonl", "qa_blind10.jsonl", "qa_blind11.jsonl", "qa_blind12.jsonl"}
HYDE_INSTRUCTION = "You are a researcher. Answer with one sentence written as in a research paper abstract."


def found_at(passages, expected) -> list[int]:
    return [i + 1 for i, p in enumerate(passages) if ({(p.source, p.line)} | {(l.source, l.line) for l in p.locations}) & expected]


def score(ranks: list[list[int]]) -> tuple[float, float]:
    return round(float(np.mean([bool(r) for r in ranks])), 3), round(float(np.mean([1 / r[0] if r else 0 for r in ranks])), 3)


def hypothetical_sentence(llm, question: str) -> str:
    messages = [{"role": "system", "content": HYDE_INSTRUCTION}, {"role": "user", "content": question}]
    return "".join(e.text for e in llm.stream_chat(messages, max_tokens=40, temperature=0.0) if not e.done).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hyde", action="store_true", help="also measure HyDE with the configured chat model")
    args = parser.parse_args()
    settings = Settings()
    llm = chat_model(settings) if args.hyde else None
    retriever = Retriever(settings)
    store, _ = retriever._index()
    scorer = SentenceScorer(retriever.embedder, cache_path=settings.sentence_vectors_path)
    items = [json.loads(line) for path in sorted((ROOT / "eval").glob("qa_*.jsonl")) if path.name not in HELD_OUT
             for line in path.read_text().splitlines() if line.strip()]
    items = [i for i in items if i["answerable"]]
    rows = []
    for item in items:
        expected = {(e["source"], e["line"]) for e in item["expected_sources"]}
        question = item["question"]
        vector = retriever.embedder.embed([question])[0]
        wide = retriever.search(question, k=15)
        sims = [float(scorer.similarity([question], s)[0].max()) if s else 0.0 for _, s in paper_texts(wide)]
        row = {"kind": item["kind"], "base": found_at(wide[:5], expected)}
        top = store.query(vector, 3)
        stored = store.get([c for c, _ in top], with_embeddings=True)
        centroid = np.mean([stored[c].embedding for c, _ in top if c in stored], axis=0)
        for alpha in (0.3, 0.6):
            fed = vector + alpha * centroid
            fed /= np.linalg.norm(fed)
            row[f"prf {alpha}"] = found_at(retriever.search(question, k=5, vector=fed), expected)  # fused with BM25
        best_sentence = {i: r + 1 for r, i in enumerate(sorted(range(len(wide)), key=lambda i: -sims[i]))}
        for weight in (0.5, 1.0):
            fused = sorted(range(len(wide)), key=lambda i: -(1 / (61 + i) + weight / (60 + best_sentence[i])))
            row[f"sentence rerank {weight}"] = found_at([wide[i] for i in fused][:5], expected)
        if llm is not None:
            hypothetical = retriever.embedder.embed([hypothetical_sentence(llm, question)])[0]
            for weight in (1.0, 0.5):
                hyde = vector + weight * hypothetical
                row[f"hyde {weight}"] = found_at(retriever.search(question, k=5, vector=hyde / np.linalg.norm(hyde)), expected)
        rows.append(row)
    for label, subset in (("paraphrase", [r for r in rows if r["kind"] == "paraphrase"]), ("all answerable", rows)):
        print(f"{label} ({len(subset)} questions): recall@5, MRR")
        for method in [k for k in rows[0] if k != "kind"]:
            print(f"  {method:22s} {score([r[method] for r in subset])}")


if __name__ == "__main__":
    main()
