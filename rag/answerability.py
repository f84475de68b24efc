"""Whether the retrieved passages can answer the question at all.

A question about a paper in the corpus can still ask for something its abstract never says ("How many GPUs were
used to train NV-Embed?"). Retrieval similarity is high for such questions, so the assistant also checks that the
passages mention what is asked: the question's names, and the head noun of the asked-for slot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag.question import QuestionAnalysis, as_analysis
from rag.sentences import split_sentences
from rag.text import STANDALONE_NUMBER, has_number, mentions, name_in, terms
from rag.types import Passage
from rag.words import words


def unanswerable_reason(question: QuestionAnalysis | str, passages: Sequence[Passage]) -> str | None:
    """Why the passages cannot answer the question (None when they may): a name of the question absent from the
    top passages, or the asked-for thing (head noun of the wh-phrase) absent from the papers the question is about."""
    question = as_analysis(question)
    ranked = sorted(passages, key=lambda p: p.rank)
    if not ranked:
        return "no passages"
    texts = [f"{p.title or ''} {p.text}" for p in ranked[:3]]
    names = list(question.names)
    joined = " ".join(texts).lower()
    missing = [n for n in names if not name_in(n, joined)]
    if missing:
        return f"not mentioned in the passages: {', '.join(missing)}"
    wh, phrases = question.wh, question.phrases
    if wh == "how many" and not any(has_number(s) for p in ranked[:2] for s in split_sentences(p.text)):
        return "no passage gives any number"  # whatever the question calls the counted thing
    if not phrases or not _names_its_paper(question, texts[0]):
        # A question that does not name its paper may paraphrase the abstract's words: an asked-for word the
        # passages lack is then no evidence that the answer is missing.
        return None
    # The papers the question is about: the best one, plus those naming every name of the question.
    about = [0] + [i for i in range(1, len(texts)) if names and all(name_in(n, texts[i].lower()) for n in names)]
    if not names:
        about = list(range(min(2, len(texts))))
    paper_terms = [terms(texts[i]) for i in about]
    heads = [p[-1] for p in phrases]
    for head in heads:
        if not any(mentions(head, t) for t in paper_terms):
            return f"the passages never mention {head!r}"
    asked = [w for p in phrases for w in p]
    coverage = max(sum(mentions(w, t) for w in asked) / len(asked) for t in paper_terms)
    if coverage < 0.5:
        return f"the passages barely mention {' '.join(asked)!r}"
    if wh == "how many":
        # "How many NL-to-TL pairs ...": any word of the counted phrase, up to its verb, may be the one counted.
        counted = list(question.counted) or heads
        sentences = [s for i in about for s in split_sentences(ranked[i].text)]
        if not any(_counts(s, counted) for s in sentences):
            return f"no passage gives a number of {heads[-1]!r}"
    return None


def _names_its_paper(question: QuestionAnalysis, top_text: str) -> bool:
    """Whether a name of the question (NV-Embed, GPT-4) or a capitalised word after its first (Dolma, Flacuna)
    occurs in the best passage: the question is then about that paper, not a paraphrase of some abstract."""
    top = top_text.lower()
    return any(n.lower() in top for n in [*question.names, *question.capitalised])


def _counts(sentence: str, counted: Sequence[str], window: int = 4) -> bool:
    """Whether the sentence puts a number before one of the counted words, at most `window` words ahead of it
    ("35,030 expert-level multiple-choice questions", "28K NL-TL pairs"), not merely somewhere in the sentence."""
    number_words = words().number_words
    tokens = list(re.finditer(r"[A-Za-z0-9][A-Za-z0-9\-.,%']*", sentence))
    for i, match in enumerate(tokens):
        word = match.group(0)
        bare = word.rstrip(".,%")
        if not (STANDALONE_NUMBER.fullmatch(bare) or word.lower() in number_words or re.fullmatch(r"\d[\d.,]*[KMBTkmbt]", bare)):
            continue
        if sentence[match.end() : match.end() + 1] == ")" or (bare.isdigit() and len(bare) == 1 and word.endswith(".")):
            continue  # a list label: "(1) question generation", "1. questions"
        ahead = [t.group(0) for t in tokens[i + 1 : i + 1 + window]]
        if any(mentions(c, terms(w)) for c in counted for w in ahead):
            return True
    return False


# ------------------------------------------------------------------------------------------ gate signals

SIGNALS = (
    "similarity", "similarity_gap", "term_share", "names_missing", "has_names", "names_its_paper",
    "head_missing", "asked_coverage", "no_number", "count_missing", "rule_refuses",
)


def gate_signals(question: QuestionAnalysis | str, passages: Sequence[Passage]) -> dict[str, float]:
    """The evidence a fitted gate weighs (rag.gate): what the rules above test, as numbers instead of verdicts.

    similarity: the best passage's cosine; similarity_gap: its lead over the second paper; term_share: the
    question's terms found in the best paper; names_missing: the share of its names absent from the top three;
    head_missing / asked_coverage: the asked-for phrase's head absent from, and its words' coverage in, the papers
    it is about; no_number / count_missing: for "how many", no number at all / none next to the counted thing;
    rule_refuses: unanswerable_reason's verdict."""
    question = as_analysis(question)
    ranked = sorted(passages, key=lambda p: p.rank)
    signals = dict.fromkeys(SIGNALS, 0.0)
    if not ranked:
        return {**signals, "names_missing": 1.0, "head_missing": 1.0, "rule_refuses": 1.0}
    texts = [f"{p.title or ''} {p.text}" for p in ranked[:3]]
    names = list(question.names)
    sims = sorted((p.similarity for p in ranked), reverse=True)
    signals["similarity"] = sims[0]
    signals["similarity_gap"] = sims[0] - sims[1] if len(sims) > 1 else sims[0]
    top_terms = terms(texts[0])
    signals["term_share"] = len(question.terms & top_terms) / len(question.terms) if question.terms else 0.0
    joined = " ".join(texts).lower()
    signals["has_names"] = float(bool(names))
    signals["names_missing"] = sum(not name_in(n, joined) for n in names) / len(names) if names else 0.0
    signals["names_its_paper"] = float(_names_its_paper(question, texts[0]))
    if question.phrases:
        about = [0] + [i for i in range(1, len(texts)) if names and all(name_in(n, texts[i].lower()) for n in names)]
        paper_terms = [terms(texts[i]) for i in about]
        heads = [p[-1] for p in question.phrases]
        signals["head_missing"] = float(any(not any(mentions(h, t) for t in paper_terms) for h in heads))
        asked = [w for p in question.phrases for w in p]
        signals["asked_coverage"] = max(sum(mentions(w, t) for w in asked) / len(asked) for t in paper_terms)
    else:
        signals["asked_coverage"] = 1.0
    if question.wh == "how many":
        signals["no_number"] = float(not any(has_number(s) for p in ranked[:2] for s in split_sentences(p.text)))
        counted = list(question.counted) or [p[-1] for p in question.phrases]
        sentences = [s for p in ranked[:2] for s in split_sentences(p.text)]
        signals["count_missing"] = float(bool(counted) and not any(_counts(s, counted) for s in sentences))
    signals["rule_refuses"] = float(unanswerable_reason(question, passages) is not None)
    return signals
