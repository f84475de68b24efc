"""Post-hoc citation checking: the model's [n] markers are parsed, checked against the passages, fixed or removed.

A 135M model cites loosely and sometimes invents, so nothing it cites is shown unchecked:
- markers that point at no passage are removed;
- each answer sentence is compared with the sentences of every passage (embedding similarity and term
  overlap; numbers in the sentence must occur in the passage); a marker stays only if its passage supports
  the sentence, and an unmarked sentence gets the marker of the passage that clearly supports it;
- a sentence no passage supports is moved to `unsupported` and left out of the answer text;
- citations are renumbered 1..m in order of first use, each with the abstract sentence that best supports it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rag.config import TuningSettings
from rag.context import Context, PaperContext
from rag.extractive import Quote
from rag.prompts import NOT_IN_CORPUS
from rag.question import QuestionAnalysis
from rag.scoring import SentenceScorer
from rag.sentences import split_sentences
from rag.text import MARKER, marker_numbers, names_in, numbers_in, strip_markers, terms
from rag.types import Citation

logger = logging.getLogger(__name__)

_PASSAGE_TAG = re.compile(r"</?\s*passages?\b[^>]*>", re.IGNORECASE)
_LIST_LABEL = re.compile(r"(?:(?<=\s)|^)\(?\d\.?\)(?=\s)")
_ABSTAIN = re.compile(r"(does not|doesn't|do not) contain (an|the) answer", re.IGNORECASE)


@dataclass
class Support:
    score: float  # combined support, 0..~1
    cosine: float
    quote: str


@dataclass
class CheckedAnswer:
    text: str
    citations: list[Citation] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    model_abstained: bool = False
    support: dict[int, float] = field(default_factory=dict)  # citation n -> support score of its quote
    claims: set[str] = field(default_factory=set)  # the claims already in the text, lower-cased


class SupportChecker:
    """Scores how well a paper's sentences support a claim; caches nothing but what the scorer caches."""

    def __init__(self, scorer: SentenceScorer, question: QuestionAnalysis, tuning: TuningSettings):
        self.scorer = scorer
        self.question = question.text
        self.question_terms = question.terms
        self.question_numbers = question.numbers
        self.tuning = tuning

    def support(self, claim: str, paper: PaperContext) -> Support:
        sentences = paper.sentences
        if not sentences or not claim.strip():
            return Support(0.0, 0.0, "")
        paper_text = " ".join(sentences)
        quoted = _quoted_sentence(claim, sentences, self.tuning.min_quote_chars)
        if quoted is not None:  # a verbatim quote (the grounded fallback's) supports itself, whatever its figures
            cosine = float(self.scorer.similarity([claim], [sentences[quoted]])[0][0])
            return Support(1.0, cosine, sentences[quoted])
        claim_numbers = numbers_in(claim) - self.question_numbers
        if claim_numbers:
            # Numbers must come from the sentences that answer the question, not from elsewhere in the abstract:
            # a small model readily copies the wrong figure of the right paper.
            relevant = sorted(range(len(sentences)), key=lambda i: -paper.scores[i])[: self.tuning.relevant_sentences]
            evidence = " ".join([paper.title or "", *(sentences[i] for i in relevant)])
            if claim_numbers - numbers_in(_LIST_LABEL.sub(" ", evidence)):  # "1.)" or "(2)" labels a list: no figure
                return Support(0.0, 0.0, "")
        known = f"{paper.title or ''} {paper_text} {self.question}".lower()
        if any(name.lower() not in known for name in names_in(claim)):
            return Support(0.0, 0.0, "")  # a name (NV-Embed, GPT-4...) the paper never mentions: invented
        claim_terms = terms(claim)
        paper_terms = terms(f"{paper.title or ''} {paper_text}")
        novel = claim_terms - paper_terms - self.question_terms
        if claim_terms and len(novel) / len(claim_terms) > 0.5:
            return Support(0.0, 0.0, "")
        cosines = self.scorer.similarity([claim], sentences)[0]
        best = Support(0.0, 0.0, "")
        for sentence, cosine in zip(sentences, cosines):
            sentence_terms = terms(sentence)
            lexical = len(claim_terms & sentence_terms) / len(claim_terms) if claim_terms else 0.0
            weight = self.tuning.cosine_weight
            score = weight * float(cosine) + (1 - weight) * lexical
            if score > best.score:
                best = Support(score, float(cosine), sentence)
        # Claims often join facts from neighbouring sentences: credit the paper's overall term coverage a little.
        coverage = len(claim_terms & paper_terms) / len(claim_terms) if claim_terms else 0.0
        best.score = max(best.score, 0.8 * best.score + 0.2 * coverage)
        return best


def _normalised(text: str) -> str:
    return " ".join(strip_markers(text).lower().split()).rstrip(".!?:; ")


def _quoted_sentence(claim: str, sentences: Sequence[str], min_quote_chars: int) -> int | None:
    """The index of the paper sentence the claim quotes whole (possibly after a title), if it does."""
    said = _normalised(claim)
    for i, sentence in enumerate(sentences):
        quote = _normalised(sentence)
        if len(quote) >= min_quote_chars and (said == quote or said.endswith(": " + quote)):
            return i
    return None


def _segments(sentence: str) -> list[tuple[str, list[int], tuple[int, int]]]:
    """(text before the marker since the previous one, numbers, marker span) for each marker of a sentence."""
    out = []
    previous = 0
    for match in MARKER.finditer(sentence):
        out.append((sentence[previous : match.start()], marker_numbers(match.group(1)), match.span()))
        previous = match.end()
    return out


def check_answer(raw: str, context: Context, scorer: SentenceScorer) -> CheckedAnswer:
    """Check every sentence of a generated answer against the context papers; see the module docstring."""
    tuning = context.tuning
    checker = SupportChecker(scorer, context.analysis, tuning)
    papers = {p.n: p for p in context.papers}
    text = _PASSAGE_TAG.sub(" ", raw)
    model_abstained = bool(_ABSTAIN.search(text)) or NOT_IN_CORPUS.lower() in text.lower()

    renumber: dict[int, int] = {}  # context paper n -> citation number, in order of first use
    best_quote: dict[int, Support] = {}
    kept: list[str] = []
    unsupported: list[str] = []
    seen_claims: set[str] = set()

    for sentence in split_sentences(text):
        claim = strip_markers(sentence)
        if len(terms(claim)) < tuning.min_claim_terms or _ABSTAIN.search(claim):
            continue  # a fragment ("2 [1].", "EmotionPrompt:") or the model's own abstention: not a claim
        key = claim.lower()
        if key in seen_claims:
            continue
        seen_claims.add(key)
        supports = {n: checker.support(claim, p) for n, p in papers.items()}

        valid: dict[tuple[int, int], list[int]] = {}
        for segment, numbers, span in _segments(sentence):
            keep = []
            for n in numbers:
                if n not in papers:
                    logger.debug("removed invented marker [%d]", n)
                    continue
                seg_support = checker.support(segment, papers[n]) if len(terms(segment)) >= 3 else supports[n]
                if max(seg_support.score, supports[n].score) >= tuning.cite_threshold:
                    keep.append(n)
            valid[span] = keep
        cited = [n for numbers in valid.values() for n in numbers]
        attached: list[int] = []
        if not cited:
            best_n = max(supports, key=lambda n: supports[n].score, default=None)
            if best_n is not None and supports[best_n].score >= tuning.attach_threshold:
                attached = [best_n]
        if not cited and not attached:
            unsupported.append(claim)
            continue

        for n in [*cited, *attached]:
            renumber.setdefault(n, len(renumber) + 1)
            if n not in best_quote or supports[n].score > best_quote[n].score:
                best_quote[n] = supports[n]
        kept.append(_rewrite(sentence, valid, attached, renumber))

    citations = [_citation(new, papers[n], best_quote[n]) for n, new in sorted(renumber.items(), key=lambda item: item[1])]
    return CheckedAnswer(
        text=" ".join(kept), citations=citations, unsupported=unsupported, model_abstained=model_abstained,
        support={renumber[n]: best_quote[n].score for n in renumber}, claims=seen_claims,
    )


def _citation(n: int, paper: PaperContext, support: Support) -> Citation:
    return Citation(
        n=n, source=paper.source, line=paper.line, paper_id=paper.paper_id, title=paper.title,
        quote=support.quote, score=round(min(1.0, max(0.0, support.cosine)), 4),
    )


def cite_quotes(
    quotes: Sequence[Quote], context: Context, scorer: SentenceScorer, after: CheckedAnswer | None = None
) -> CheckedAnswer:
    """An extractive answer's quotes, cited directly (after a checked answer, continuing its numbering).

    Every quoted sentence is the paper's own, so it needs no check: it is cited with its paper, and the citation
    shows the first quoted sentence unless it already shows a verbatim one. A fragment, or a claim the answer
    already makes, is left out, as check_answer leaves them out."""
    base = after or CheckedAnswer(text="")
    citations = list(base.citations)
    support, claims = dict(base.support), set(base.claims)
    number = {c.paper_id: c.n for c in citations}
    kept = [base.text] if base.text else []
    for quote in quotes:
        paper = quote.paper
        for i, sentence in enumerate(quote.sentences):
            titled = quote.title_first and i == 0
            claim = f"{paper.title}: {sentence}" if titled else sentence
            key = " ".join(claim.lower().split())
            if len(terms(claim)) < context.tuning.min_claim_terms or _ABSTAIN.search(claim) or key in claims:
                continue
            claims.add(key)
            n = number.setdefault(paper.paper_id, len(citations) + 1)
            if support.get(n, 0.0) < 1.0:
                cosine = float(scorer.similarity([claim], [sentence])[0][0])
                citation = _citation(n, paper, Support(1.0, cosine, sentence))
                citations = [c for c in citations if c.n != n] + [citation]
                support[n] = 1.0
            match = re.search(r"[.!?]+$", sentence)
            body, end = (sentence[: match.start()], match.group(0)) if match else (sentence, ".")
            kept.append(_tidy(f"{paper.title} [{n}]: {body}{end}" if titled else f"{body} [{n}]{end}"))
    citations.sort(key=lambda c: c.n)
    return CheckedAnswer(
        text=" ".join(kept), citations=citations, unsupported=list(base.unsupported),
        model_abstained=base.model_abstained, support=support, claims=claims,
    )


def _tidy(sentence: str) -> str:
    return re.sub(r"\s+([.,;:!?])", r"\1", " ".join(sentence.split())).strip()


def _rewrite(sentence: str, valid: dict[tuple[int, int], list[int]], attached: list[int], renumber: dict[int, int]) -> str:
    """The sentence with its markers renumbered (invalid ones dropped) and, if any, a new marker at its end."""
    out, previous = [], 0
    for (start, end), numbers in sorted(valid.items()):
        out.append(sentence[previous:start])
        if numbers:
            out.append(" " + "".join(f"[{renumber[n]}]" for n in numbers))
        previous = end
    out.append(sentence[previous:])
    result = _tidy("".join(out))
    # "claim. [1]" -> "claim [1]."
    result = re.sub(r"([.!?])((?:\s*\[\d+\])+)\s*$", lambda m: f"{m.group(2)}{m.group(1)}", result).strip()
    if attached:
        tail = "".join(f"[{renumber[n]}]" for n in attached)
        match = re.search(r"[.!?]+$", result)
        result = f"{result[: match.start()]} {tail}{match.group(0)}" if match else f"{result} {tail}"
    return result
