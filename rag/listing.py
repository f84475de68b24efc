"""List answers for "which papers ...?" questions: every paper whose own abstract qualifies it, each named, with
the abstract sentences that make it qualify, cited.

A list is judged paper by paper, never refused as a whole because no single abstract matches the question's
wording: when the question names something that only some papers mention (BIG-Bench, GPT-2, "mixture-of-experts
(MoE)", Korean), every paper that mentions it qualifies, found by a regex over the whole store, not only the top
of a search. (Scoring papers against a bar without such a name was measured on the 39 list questions of the dev
and blind sets and lost to the model's answer from the top papers: 13 complete answers against 18.)
The answer is extractive: no model call, so it is exact, instant and the same with any model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag.config import TuningSettings
from rag.context import paper_texts
from rag.extractive import figure_sentence, naming_sentence
from rag.question import QuestionAnalysis
from rag.scoring import SentenceScorer, paper_scores
from rag.text import name_pattern
from rag.types import Citation, Passage


@dataclass(frozen=True)
class NamedFilter:
    """The papers that mention every name of a list question that only some papers mention, and those names."""

    papers: frozenset[str]
    names: tuple[str, ...]
    total: int = 0  # how many papers mention them (more than a list shows: the most relevant are listed)


@dataclass(frozen=True)
class ListedPaper:
    passage: Passage  # the paper's best passage (title, source, line)
    sentence: str  # the sentence that makes it qualify (the citation's quote)
    score: float  # the paper's standing for the question (scoring.paper_scores), comparable across papers
    cosine: float
    quoted: tuple[str, ...]  # what the answer quotes, in abstract order: `sentence`, the next best, where the paper
    # names its contribution ("we introduce MIGU (...)") when neither does, and a figure when one is asked

    @property
    def label(self) -> str:
        return self.passage.title or self.passage.label


def qualifying_papers(
    question: QuestionAnalysis,
    passages: Sequence[Passage],
    scorer: SentenceScorer,
    tuning: TuningSettings,
    named: NamedFilter,
) -> list[ListedPaper]:
    """The candidate papers that mention the question's telling names (see Assistant._named_filter), best
    first, each quoted where it names one."""
    patterns = [re.compile(name_pattern(n)) for n in named.names]
    scored: list[ListedPaper] = []
    for passage, sentences in paper_texts(passages):
        if not sentences or passage.paper_id not in named.papers:
            continue
        cosines = scorer.similarity([question.text], sentences)[0]
        scores, standing = paper_scores(question, sentences, cosines, tuning, passage.title)
        order = sorted(range(len(sentences)), key=lambda i: -scores[i])
        order.sort(key=lambda i: not any(p.search(sentences[i]) for p in patterns))  # where it names it, if it does
        best = order[0]
        chosen = {best, *[i for i in order if i != best][: tuning.fallback_sentences - 1]}
        naming = naming_sentence(sentences, passage.title)
        if naming is not None and naming_sentence([sentences[i] for i in chosen], passage.title) is None:
            chosen.add(naming)
        extra = figure_sentence(sentences, order, chosen, question) if question.wants_figure else None
        if extra is not None:  # "Which papers ..., and how many ...?"
            chosen.add(extra)
        scored.append(ListedPaper(
            passage=passage, sentence=sentences[best], score=standing,
            cosine=float(cosines[best]),
            quoted=tuple(sentences[i] for i in sorted(chosen)),
        ))
    scored.sort(key=lambda p: -p.score)
    return scored[: tuning.list_max_papers]


def list_answer(listed: Sequence[ListedPaper], named: NamedFilter | None = None) -> tuple[list[str], list[Citation]]:
    """The answer's lines (a heading, then one cited line per paper) and their citations."""
    if named is not None and named.total > len(listed):
        heading = f"{named.total} papers mention {' / '.join(named.names)}; the {len(listed)} most relevant:"
    else:
        heading = f"{len(listed)} papers in the corpus match:" if len(listed) > 1 else "One paper in the corpus matches:"
    lines = [heading]
    citations = []
    for n, paper in enumerate(listed, start=1):
        text = " ".join(paper.quoted)
        end = re.search(r"[.!?…]+$", text)
        body, stop = (text[: end.start()], end.group(0)) if end else (text, ".")
        lines.append(f"- {paper.label} [{n}]: {body}{stop}")
        p = paper.passage
        citations.append(Citation(n=n, source=p.source, line=p.line, paper_id=p.paper_id, title=p.title,
                                  quote=paper.sentence, score=round(min(1.0, max(0.0, paper.cosine)), 4)))
    return lines, citations
