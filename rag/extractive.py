"""The extractive answer: the abstract sentences that answer what the question asks, quoted and cited.

Used when the model's answer adds nothing the question does not already say, to complete an answer that leaves
out the names or numbers of the most relevant sentence, and for each paper a multi-paper answer left out. What
is quoted depends on what is asked: a figure ("how many ...?") gets a sentence that gives one, a method, dataset
or piece of work ("which model ...?", "Is there work on ...?", "Can ...?") the sentence where the paper names its
contribution, and a question holding a specific name or number the sentence that holds it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from rag.context import Context, PaperContext
from rag.question import QuestionAnalysis, as_analysis
from rag.sentences import split_sentences
from rag.text import cited_numbers, figures, mentions_any, names_in, numbers_in, strip_markers, terms
from rag.types import Citation
from rag.words import alternation, words

_CAPITALISED = re.compile(r"(?:(?<=[\s(\"'])|^)([A-Z][A-Za-z0-9\-]+)")


def new_facts(text: str, question: QuestionAnalysis | str) -> set[str]:
    """Numbers and names in the text that the question does not already contain: what an answer adds.

    A sentence that only restates the question ("The method that updates ... is a method [1].") adds none."""
    question = as_analysis(question)
    asked = question.lower
    common = words().common_capitalised
    text = strip_markers(text)
    found = {n for n in numbers_in(text) if n not in question.numbers}
    candidates = {name for name in names_in(text) if any(c.isalpha() for c in name)}
    for sentence in split_sentences(text):  # capitalised words, except each sentence's first
        candidates |= set(_CAPITALISED.findall(sentence.split(" ", 1)[1] if " " in sentence else ""))
    found |= {c for c in candidates if c.lower() not in asked and c.lower() not in common}
    return found


def adds_to(sentence: str, question: QuestionAnalysis | str) -> bool:
    """Whether a sentence adds a name or a number to the question; a lone digit does not count ("The papers
    that do X are: 1 [1]." restates the question and labels a list)."""
    return any(not (fact.isdigit() and len(fact) == 1) for fact in new_facts(sentence, question))


def papers_answered(text: str, citations: Sequence[Citation], question: QuestionAnalysis | str) -> set[str]:
    """The papers cited by at least one sentence of a checked answer that adds to the question."""
    question = as_analysis(question)
    paper_of = {c.n: c.paper_id for c in citations}
    return {
        paper_of[n]
        for sentence in split_sentences(text)
        if adds_to(sentence, question)
        for n in cited_numbers(sentence)
        if n in paper_of
    }


_INTRODUCES = re.compile(
    rf"\b(?:we|this (?:\w+\s+)?(?:{alternation(words().self_references)}))\s+(?:\w+\s+)?"
    rf"(?:{alternation(words().introducing_verbs)})\w*|\b(?:{alternation(words().naming_phrases)})\b",
    re.IGNORECASE,
)
# A coined name: an acronym in brackets "(DMoERM)", or a word with inner capitals or digits ("Graph200K", "LI-DiT"),
# the latter counted only when the paper's title has it too (see _names_contribution).
_COINED = re.compile(r"\(([A-Z][A-Za-z0-9\-]*[A-Z0-9][A-Za-z0-9\-]*)\)|\b([A-Za-z]+[A-Z0-9][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*)\b")
# A name put in quotes as it is introduced: presented as "Sahaay", called ‘X-Net’.
_QUOTED_NAME = re.compile(r"[\"“‘`']([A-Z][\w\-]*(?: [A-Z][\w\-]*){0,3})[,.]?[\"”’']")


def _mentions_kind(sentence: str, kind: str | None) -> bool:
    return kind is not None and re.search(rf"\b{re.escape(kind)}s?\b", sentence, re.IGNORECASE) is not None


# A name given by a naming phrase: "a new QG dataset called EduProbe", "a unified model termed In-BoXBART".
_NAMED_AS = re.compile(rf"\b(?:{alternation(words().naming_phrases)})\s+([A-Z][\w\-]*)")


def _naming_strength(sentence: str, title: str | None) -> int:
    """How clearly a sentence coins a name: 2 for one in brackets or quotes (PromptSRC (...), "Sahaay") or given
    by a naming phrase ("called EduProbe"), 1 for a name the title also has, 0 for none."""
    coined = _COINED.findall(sentence)
    if any(bracketed for bracketed, _ in coined) or _QUOTED_NAME.search(sentence) or _NAMED_AS.search(sentence):
        return 2
    return 1 if title and any(word and word in title for _, word in coined) else 0


def _names_contribution(sentence: str, title: str | None, kind: str | None = None) -> bool:
    """Whether the sentence introduces something by a coined name (in brackets or quotes, or a name the title also
    has) and, when a kind of thing is asked for, introduces that kind."""
    if not _INTRODUCES.search(sentence):
        return False
    if kind is not None and not _mentions_kind(sentence, kind):
        return False
    return _naming_strength(sentence, title) > 0


def figure_sentence(
    sentences: Sequence[str], ranked: Sequence[int], chosen: Collection[int], question: QuestionAnalysis
) -> int | None:
    """When none of the chosen sentences gives a figure the question does not already hold, the most relevant
    other one (in `ranked` order) that gives one about something asked."""
    if any(figures(sentences[i]) - question.numbers for i in chosen):
        return None
    return next(
        (i for i in ranked
         if i not in chosen and figures(sentences[i]) - question.numbers and question.terms & terms(sentences[i])),
        None,
    )


def naming_sentence(sentences: Sequence[str], title: str | None) -> int | None:
    """The sentence where a paper introduces its contribution by a coined name ("we propose MIGU (...)"), the
    clearest first, if it has one."""
    naming = [i for i, s in enumerate(sentences) if _names_contribution(s, title)]
    return max(naming, key=lambda i: _naming_strength(sentences[i], title), default=None)


@dataclass(frozen=True)
class Quote:
    """One paper's part of an extractive answer: sentences of its abstract, verbatim and in their order."""

    paper: PaperContext
    sentences: tuple[str, ...]
    title_first: bool  # the paper's title leads the quote ("Title [n]: ...")

    @property
    def text(self) -> str:
        """The quote as the answer shows it, cited with the paper's context number."""
        text = " ".join(self.sentences)
        match = re.search(r"[.!?]+$", text)
        body, end = (text[: match.start()], match.group(0)) if match else (text, ".")
        if self.title_first:
            return f"{self.paper.title} [{self.paper.n}]: {body}{end}"
        return f"{body} [{self.paper.n}]{end}"


def quotes_text(quotes: Sequence[Quote]) -> str:
    return " ".join(q.text for q in quotes)


def extractive_quotes(
    context: Context, multi: bool, papers: Sequence[int] | None = None, sentences: int | None = None
) -> list[Quote]:
    """An extractive answer, cited by rag.citations.cite_quotes: used when the model's answer has no supported
    sentence that adds anything (and, for a multi-paper question, for each paper the model left out). Per paper: its most relevant sentences in their
    original order, making sure one of them names or quantifies something the question does not. A question
    after a figure also gets the best sentence that gives one about something asked; a question after a method,
    dataset or work gets the sentence where the paper names its contribution. The title leads when the paper
    has one and the quote alone names nothing new, when a work is asked for, or when several papers are listed."""
    question = context.analysis
    sentences = sentences or context.tuning.fallback_sentences
    chosen_papers = [p for p in context.papers if papers is None or p.n in papers]
    if papers is None and not multi:
        chosen_papers = chosen_papers[:1]
    asks_for_a_name = multi or question.wants_work
    kind = question.kind
    figure_asked = question.wants_figure
    anchors = question.names
    parts = []
    for paper in chosen_papers:
        if not paper.sentences:
            continue
        ranked = sorted(range(len(paper.sentences)), key=lambda i: -paper.scores[i])
        chosen = ranked[:sentences]
        top = paper.scores[ranked[0]]
        if not any(new_facts(paper.sentences[i], question) for i in chosen):
            bearing = [i for i in ranked[sentences:] if paper.scores[i] >= top - 0.25 and new_facts(paper.sentences[i], question)]
            chosen = chosen[:1] + bearing[:1] if bearing else chosen
        extra = figure_sentence(paper.sentences, ranked, chosen, question) if figure_asked else None
        if extra is not None:  # "How large / how many ...?"
            chosen = chosen + [extra]
        if asks_for_a_name and not any(_names_contribution(paper.sentences[i], paper.title, kind) for i in chosen):
            # "What method/dataset ...?", "Is there work on ...?": quote the sentence where the paper names what it
            # contributes, preferring one that introduces the kind of thing asked for ("dataset") and then one that
            # coins a name (an acronym in brackets, a name in the title).
            naming = [
                i for i in ranked
                if i not in chosen and _INTRODUCES.search(paper.sentences[i])  # "we propose model specialization"
            ]
            naming.sort(key=lambda i: (not _mentions_kind(paper.sentences[i], kind),
                                       -_naming_strength(paper.sentences[i], paper.title)))
            chosen = chosen + naming[:1]
        # "Which benchmark supplied the 119 tasks ...?": the sentence holding a name or number of the question that
        # is specific to it (in one or two of the paper's sentences, unlike "LLMs") is the one the question points at.
        specific = [a for a in anchors if 1 <= sum(mentions_any(x, [a]) for x in paper.sentences) <= 2]
        if specific and not any(mentions_any(paper.sentences[i], specific) for i in chosen):
            anchored = [i for i in ranked if i not in chosen and mentions_any(paper.sentences[i], specific)
                        and new_facts(paper.sentences[i], question)]
            chosen = chosen + anchored[:1]
        quoted = tuple(paper.sentences[i] for i in sorted(chosen))
        title_first = bool(paper.title) and (asks_for_a_name or not new_facts(" ".join(quoted), question))
        parts.append(Quote(paper, quoted, title_first))
    return parts
