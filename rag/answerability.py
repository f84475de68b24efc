"""Whether the retrieved passages can answer the question at all.

A question about a paper in the corpus can still ask for something its abstract never says ("How many GPUs were
used to train NV-Embed?"). Retrieval similarity is high for such questions, so the assistant also checks that the
passages mention what is asked: the question's names, and the head noun of the asked-for slot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag.question import QuestionAnalysis, as_analysis
from rag.sentences import split_sentences
from rag.text import STANDALONE_NUMBER, figures, has_number, mentions, name_in, terms
from rag.types import Passage
from rag.words import words


@dataclass(frozen=True)
class _Evidence:
    """What the top passages say about the question's names, asked-for phrase and count, read once for both the
    rules (unanswerable_reason) and the fitted gate's signals (gate_signals)."""

    missing_names: list[str]  # names of the question absent from the top three passages
    any_number: bool  # the top two passages give some number
    names_its_paper: bool  # the best passage holds a name or capitalised word of the question
    missing_heads: list[str]  # heads of the asked-for phrases that the papers it is about never mention
    coverage: float  # the best share of the asked-for words one of those papers mentions (1 with no phrase)
    counted: bool  # for "how many": a number stands next to the counted thing in those papers
    figure_given: bool  # for "what <figure>": a sentence of those papers gives a figure and names the asked thing
    percent_for_subject: bool  # for "what <figure> does X reach": a sentence of those papers names X and gives a %


def _evidence(question: QuestionAnalysis, ranked: Sequence[Passage]) -> _Evidence:
    texts = [f"{p.title or ''} {p.text}" for p in ranked[:3]]
    names = list(question.names)  # even one given as an example: "such as DP-SGD" absent says off-topic
    joined = " ".join(texts).lower()
    # The papers the question is about: the best one, plus those naming every name of the question.
    about = [0] + [i for i in range(1, len(texts)) if names and all(name_in(n, texts[i].lower()) for n in names)]
    if not names:
        about = list(range(min(2, len(texts))))
    paper_terms = [terms(texts[i]) for i in about]
    heads = [p[-1] for p in question.phrases]
    asked = [w for p in question.phrases for w in p]
    counted = True
    if question.wh == "how many":
        # "How many NL-to-TL pairs ...": any word of the counted phrase, up to its verb, may be the one counted.
        counted_words = list(question.counted) or heads
        sentences = [s for i in about for s in split_sentences(ranked[i].text)]
        counted = not counted_words or any(_counts(s, counted_words) for s in sentences)
    figure_given, percent_for_subject = True, False
    if question.wh == "what" and question.wants_figure:
        # "What Disambig-F1 score does ToC reach?": an abstract that names the metric but gives no figure with it
        # cannot answer (a figure elsewhere in it is for something else).
        sentences = [s for i in about for s in split_sentences(ranked[i].text)]
        figure_given = any(
            figures(s) - versions(s) and (not asked or any(mentions(w, terms(s)) for w in asked)) for s in sentences
        )
        # Abstracts give a percentage without naming the measure ("... increases to 84.54% ... by Flan-T5"): for
        # "what accuracy does Flan-T5 reach", that sentence answers even though 'accuracy' is nowhere.
        subject = question.subject
        percent_for_subject = (
            subject is not None
            and bool(heads)
            and all(h in words().percent_measures for h in heads)
            and any(_PERCENT.search(s) and name_in(subject, s.lower()) for s in sentences)
        )
    return _Evidence(
        missing_names=[n for n in names if not name_in(n, joined)],
        any_number=any(has_number(s) for p in ranked[:2] for s in split_sentences(p.text)),
        names_its_paper=_names_its_paper(question, texts[0]),
        missing_heads=[h for h in heads if not any(mentions(h, t) for t in paper_terms)],
        coverage=max(sum(mentions(w, t) for w in asked) / len(asked) for t in paper_terms) if asked else 1.0,
        counted=counted,
        figure_given=figure_given,
        percent_for_subject=percent_for_subject,
    )


def unanswerable_reason(question: QuestionAnalysis | str, passages: Sequence[Passage]) -> str | None:
    """Why the passages cannot answer the question (None when they may): a name of the question absent from the
    top passages, or the asked-for thing (head noun of the wh-phrase) absent from the papers the question is about."""
    question = as_analysis(question)
    ranked = sorted(passages, key=lambda p: p.rank)
    if not ranked:
        return "no passages"
    return _reason(question, _evidence(question, ranked))


def _reason(question: QuestionAnalysis, evidence: _Evidence) -> str | None:
    if evidence.missing_names:
        return f"not mentioned in the passages: {', '.join(evidence.missing_names)}"
    if question.wh == "how many" and not evidence.any_number:
        return "no passage gives any number"  # whatever the question calls the counted thing
    if not question.phrases or not evidence.names_its_paper:
        # A question that does not name its paper may paraphrase the abstract's words: an asked-for word the
        # passages lack is then no evidence that the answer is missing.
        return None
    if evidence.percent_for_subject:
        return None  # the measure is given as a percentage for what the question is about, unnamed
    if evidence.missing_heads:
        return f"the passages never mention {evidence.missing_heads[0]!r}"
    if evidence.coverage < 0.5:
        return f"the passages barely mention {' '.join(w for p in question.phrases for w in p)!r}"
    if not evidence.counted:
        return f"no passage gives a number of {question.phrases[-1][-1]!r}"
    if not evidence.figure_given:
        return f"no passage gives a figure for {' '.join(question.phrases[-1])!r}"
    return None


def versions(sentence: str) -> set[str]:
    """Version numbers of names ("Wenlan 2.0", "ERNIE 3.0"): a dotted number right after a capitalised word is
    part of a name, not a figure the sentence gives."""
    return set(_VERSION.findall(sentence))


_VERSION = re.compile(r"\b[A-Z][\w\-]*\s(\d+(?:\.\d+)+)\b")
_PERCENT = re.compile(r"\d(?:[\d.,]*\d)?\s?%")


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
    evidence = _evidence(question, ranked)
    sims = sorted((p.similarity for p in ranked), reverse=True)
    names = question.names
    signals["similarity"] = sims[0]
    signals["similarity_gap"] = sims[0] - sims[1] if len(sims) > 1 else sims[0]
    top_terms = terms(f"{ranked[0].title or ''} {ranked[0].text}")
    signals["term_share"] = len(question.terms & top_terms) / len(question.terms) if question.terms else 0.0
    signals["has_names"] = float(bool(names))
    signals["names_missing"] = len(evidence.missing_names) / len(names) if names else 0.0
    signals["names_its_paper"] = float(evidence.names_its_paper)
    signals["head_missing"] = float(bool(evidence.missing_heads))
    signals["asked_coverage"] = evidence.coverage
    if question.wh == "how many":
        signals["no_number"] = float(not evidence.any_number)
        signals["count_missing"] = float(not evidence.counted)
    signals["rule_refuses"] = float(_reason(question, evidence) is not None)
    return signals
