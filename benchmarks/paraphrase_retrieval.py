"""Ways to find paraphrased papers, measured against today's retrieval (recall@5, MRR).

On every answerable question of the dev set and the blind sets (never the held-out ones), for the paraphrase
questions and for all: (a) dense pseudo-relevance feedback: the question vector plus alpha times the mean of the
top three chunks' vectors, searched again; (b) the top 15 papers re-ranked by reciprocal-rank fusion of the
retriever's order with the order of their best sentence's cosine to the question (weight w); with --hyde,
(c) hypothetical-document search (HyDE): the configured chat model writes one abstract-style sentence that
answers the question, and the question vector plus that sentence's vector (weight 1 or 1/2) is searched;
(d) title-vector fusion: the top 10 papers re-ranked by reciprocal-rank fusion of the retriever's order with the
order of their titles' cosine to the question (weight w), for every question or only for those that name
nothing the retriever anchors on; with --upr, (e) query-likelihood re-ranking ("Improving Passage Retrieval with
Zero-Shot Question Generation", UPR): the configured local GGUF scores log P(question | passage) for each of the
top five papers, the passage being the title and the paper's two sentences closest to the question, and the papers
are ordered by that score alone or fused with the retriever's order. Reported with the re-ranking's time per
question, which adds to the time to first token.

    .venv/bin/python benchmarks/paraphrase_retrieval.py [--hyde] [--upr] [--sets all]
    # needs `make index`; --hyde and --upr load the model; --sets all adds blind 8-14, already scored
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.chat_model import chat_model  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.context import paper_texts  # noqa: E402
from rag.llm import LocalLLM, llama_arguments  # noqa: E402
from rag.question import analyse  # noqa: E402
from rag.retrieval import Retriever  # noqa: E402
from rag.scoring import SentenceScorer  # noqa: E402

HELD_OUT = {"qa_blind8.jsonl", "qa_blind9.jsonl", "qa_blind10.jsonl", "qa_blind11.jsonl", "qa_blind12.jsonl",
            "qa_blind13.jsonl", "qa_blind14.jsonl",
            "qa_blind15.jsonl"}
SCORED = {"qa_blind8.jsonl", "qa_blind9.jsonl", "qa_blind10.jsonl", "qa_blind11.jsonl", "qa_blind12.jsonl",
          "qa_blind13.jsonl", "qa_blind14.jsonl"}  # already scored
HYDE_INSTRUCTION = "You are a researcher. Answer with one sentence written as in a research paper abstract."
UPR_INSTRUCTION = "Passage: {passage}\nWrite a question that this passage answers."


def found_at(passages, expected) -> list[int]:
    return [i + 1 for i, p in enumerate(passages) if ({(p.source, p.line)} | {(l.source, l.line) for l in p.locations}) & expected]


def score(ranks: list[list[int]]) -> tuple[float, float]:
    return round(float(np.mean([bool(r) for r in ranks])), 3), round(float(np.mean([1 / r[0] if r else 0 for r in ranks])), 3)


def hypothetical_sentence(llm, question: str) -> str:
    messages = [{"role": "system", "content": HYDE_INSTRUCTION}, {"role": "user", "content": question}]
    return "".join(e.text for e in llm.stream_chat(messages, max_tokens=40, temperature=0.0) if not e.done).strip()


class QuestionLikelihood:
    """log P(question | passage) under the local GGUF, per question token (UPR), in the model's chat template."""

    def __init__(self, settings: Settings):
        from llama_cpp import Llama

        self.chat = LocalLLM(settings)  # for its chat template
        self.llama = Llama(**(llama_arguments(settings.llm, self.chat.path) | {"logits_all": True}))

    def score(self, passage: str, question: str) -> float:
        prompt = self.chat.format_chat([{"role": "user", "content": UPR_INSTRUCTION.format(passage=passage)}])
        context = self.llama.tokenize(prompt.encode(), add_bos=True, special=True)
        target = self.llama.tokenize(question.encode(), add_bos=False, special=False)
        self.llama.reset()
        self.llama.eval(context + target)
        logits = np.asarray(self.llama.scores[len(context) - 1 : len(context) + len(target) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        return float((logits[np.arange(len(target)), target] - log_norm).mean())


def rrf_order(n: int, other: list[float], weight: float) -> list[int]:
    """Positions 0..n-1 (the retriever's order) re-ranked by reciprocal-rank fusion (k = 60, ranks from 1) with the
    order of `other`, weighted."""
    other_rank = {i: r + 1 for r, i in enumerate(sorted(range(n), key=lambda i: -other[i]))}
    return sorted(range(n), key=lambda i: -(1 / (61 + i) + weight / (60 + other_rank[i])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hyde", action="store_true", help="also measure HyDE with the configured chat model")
    parser.add_argument("--upr", action="store_true", help="also measure query-likelihood re-ranking (local GGUF)")
    parser.add_argument("--sets", choices=("unscored", "all"), default="unscored",
                        help="all: also the blind sets already scored (8-14); the held-back set is never read")
    args = parser.parse_args()
    settings = Settings()
    llm = chat_model(settings) if args.hyde else None
    likelihood = QuestionLikelihood(settings) if args.upr else None
    skipped = HELD_OUT - SCORED if args.sets == "all" else HELD_OUT
    retriever = Retriever(settings)
    store, _ = retriever._index()
    scorer = SentenceScorer(retriever.embedder, cache_path=settings.sentence_vectors_path)
    items = [json.loads(line) for path in sorted((ROOT / "eval").glob("qa_*.jsonl")) if path.name not in skipped
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
        for weight in (0.5, 1.0):
            row[f"sentence rerank {weight}"] = found_at([wide[i] for i in rrf_order(len(wide), sims, weight)][:5], expected)
        papers = paper_texts(wide)[:10]
        titles = retriever.embedder.embed([p.title or (s[0] if s else "") for p, s in papers]) @ vector
        anchored = bool(analyse(question).required_names)
        row["base, by paper"] = found_at([p for p, _ in papers][:5], expected)
        for weight in (0.3, 1.0):
            order = rrf_order(len(papers), list(titles), weight)
            row[f"title fusion {weight}"] = found_at([papers[i][0] for i in order][:5], expected)
            order = list(range(len(papers))) if anchored else order
            row[f"title fusion {weight}, no name"] = found_at([papers[i][0] for i in order][:5], expected)
        if likelihood is not None:
            started = time.perf_counter()
            top = papers[:5]
            scores = []
            for passage, sentences in top:
                sims = scorer.similarity([question], sentences)[0] if sentences else np.zeros(0)
                closest = [sentences[i] for i in sorted(np.argsort(-sims)[:2])]
                scores.append(likelihood.score(" ".join([passage.title or "", *closest]).strip(), question))
            row["upr seconds"] = time.perf_counter() - started
            row["upr"] = found_at([top[i][0] for i in sorted(range(len(top)), key=lambda i: -scores[i])], expected)
            row["upr fused 1.0"] = found_at([top[i][0] for i in rrf_order(len(top), scores, 1.0)], expected)
        if llm is not None:
            hypothetical = retriever.embedder.embed([hypothetical_sentence(llm, question)])[0]
            for weight in (1.0, 0.5):
                hyde = vector + weight * hypothetical
                row[f"hyde {weight}"] = found_at(retriever.search(question, k=5, vector=hyde / np.linalg.norm(hyde)), expected)
        rows.append(row)
    for label, subset in (("paraphrase", [r for r in rows if r["kind"] == "paraphrase"]), ("all answerable", rows)):
        print(f"{label} ({len(subset)} questions): recall@5, MRR")
        for method in [k for k in rows[0] if k not in ("kind", "upr seconds")]:
            print(f"  {method:28s} {score([r[method] for r in subset])}")
        if likelihood is not None:
            print(f"  upr seconds per question, p50 {np.median([r['upr seconds'] for r in subset]):.2f}")


if __name__ == "__main__":
    main()
