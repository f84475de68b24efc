"""One analysis of a question, made once per request and passed to every later stage.

`analyse(question, history)` makes a follow-up standalone ("and which dataset did they use?" names what the earlier
questions were about) and reads from the standalone question what the rest of the pipeline needs: its terms,
names and numbers, the wh-word and the asked-for phrase, and whether it wants a figure, a named piece of work, or
a list of papers. Deterministic and cheap (regexes and the word lists of rag/words.toml; no model).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from rag.text import NAME, names_in, numbers_in, terms
from rag.types import ChatTurn
from rag.words import alternation, words


@dataclass(frozen=True)
class QuestionAnalysis:
    asked: str  # as the user wrote it
    text: str  # standalone: a follow-up names what the earlier questions were about
    followup: bool
    terms: frozenset[str]
    names: tuple[str, ...]  # NV-Embed, Qwen2.5, GPT-4: a digit or an inner capital
    required_names: tuple[str, ...]  # the names not only given as examples ("tasks like NER"): what retrieval anchors on
    aliases: tuple[tuple[str, str], ...]  # (acronym, what it stands for): ("MoE", "mixture-of-experts")
    capitalised: tuple[str, ...]  # capitalised words after the first (Dolma, Flacuna)
    numbers: frozenset[str]
    wh: str  # "what", "which", "how many", "how much" or ""
    phrases: tuple[tuple[str, ...], ...]  # the asked-for noun phrase(s), split at "and"
    counted: tuple[str, ...]  # for "how many": the words of the counted thing
    multi: bool  # may need several papers (mentions "papers", "works", "studies"...)
    wants_list: bool  # asks which papers do something ("Which papers ...", "Are there studies ..."): a list answer
    wants_figure: bool  # "how many", "what accuracy"
    wants_work: bool  # "which method", "is there work on"
    kind: str | None  # the kind of thing asked for ("dataset", "benchmark"...)
    subject: str | None = None  # the first name after "does/do/did": "what accuracy does Flan-T5 reach" -> Flan-T5

    @property
    def lower(self) -> str:
        return self.text.lower()


def list_names(question: QuestionAnalysis) -> list[tuple[str, ...]]:
    """What a list question requires its papers to mention, each as one or more interchangeable forms: its names
    (GPT-2), capitalised phrases (Massive Text Embedding Benchmark, Korean), and an acronym with what it stands
    for (MoE, mixture-of-experts). Names given as examples or contrasts ("such as CLIP", "instead of GPT-4") are not required,
    nor is the owner a name is qualified by ("Google's PaLM": a paper on PaLM need not say Google)."""
    text = _without_phrases_after((*words().example_markers, *words().contrast_markers), question.text)
    text = _POSSESSIVE_OWNER.sub(" ", text)
    expansions = dict(question.aliases)
    runs = [capitalised_head(m.group(1)) for m in _CAPITALISED_RUN.finditer(text.strip())]
    forms = [*runs, *(n for n in names_in(text) if not any(n in run.split() for run in runs))]
    groups: list[tuple[str, ...]] = []
    for form in dict.fromkeys(forms):
        if any(form == expansion for expansion in expansions.values()):
            continue  # listed with its acronym
        group = (form, expansions[form]) if form in expansions else (form,)
        if groups and _alternatives(groups[-1][0], form, text):  # "Natural Instructions or Super-NaturalInstructions"
            groups[-1] = (*groups[-1], *group)
        else:
            groups.append(group)
    return groups


def _without_phrases_after(markers: Sequence[str], text: str) -> str:
    """The text without what follows each marker up to the next punctuation ("such as CLIP and BLIP, ...")."""
    # Up to a comma, a bracket or the end of the sentence; a dot inside a word ("PM2.5", "e.g.") does not end it.
    tail = r"(?:[^,.;:?!()]|\.(?=\S))*"
    return re.sub(rf"\b(?:{alternation(tuple(markers))})(?:\s|$){tail}", " ", text, flags=re.IGNORECASE)


def _alternatives(first: str, second: str, text: str) -> bool:
    """Whether the question offers two names as alternatives ("X or Y", "X, or the Y"): a paper needs only one."""
    return re.search(rf"{re.escape(first)}\s*,?\s+or\s+(?:the\s+|an?\s+)?{re.escape(second)}", text) is not None


def capitalised_head(word: str) -> str:
    """A capitalised word without the lower-case tail it is hyphenated to: "Korean-language" -> "Korean"."""
    return "-".join(itertools.takewhile(lambda part: not part.islower(), word.split("-"))) or word


def as_analysis(question: QuestionAnalysis | str) -> QuestionAnalysis:
    """The analysis itself, or that of a standalone question given as text (tests and library callers)."""
    return question if isinstance(question, QuestionAnalysis) else analyse(question)


def analyse(question: str, history: Sequence[ChatTurn] = ()) -> QuestionAnalysis:
    text = standalone_question(question, history)
    wh, phrases = asked_slot(text)
    return QuestionAnalysis(
        asked=question,
        text=text,
        followup=text != question.strip(),
        terms=frozenset(terms(text)),
        names=tuple(names_in(text)),
        required_names=tuple(names_in(_without_phrases_after(words().example_markers, text))),
        aliases=tuple(acronym_expansions(text)),
        capitalised=tuple(w for w in NAME.findall(text)[1:] if w[0].isupper()),
        numbers=frozenset(numbers_in(text)),
        wh=wh,
        phrases=tuple(tuple(p) for p in phrases),
        counted=tuple(counted_words(text)),
        multi=bool(_patterns().multi.search(text)),
        wants_list=bool(_patterns().list_question.search(text)) and not re.match(r"\s*how many\b", text, re.IGNORECASE),
        wants_figure=bool(_patterns().figure.search(text)),
        wants_work=bool(_patterns().named_thing.search(text) or _patterns().asks_for_work.search(text.strip())),
        kind=asked_kind(text),
        subject=subject_name(text),
    )


def subject_name(question: str) -> str | None:
    """The name a question asks something of: the first name after its "does", "do" or "did" ("What accuracy does
    Flan-T5 reach when trained on TarGEN's data?" -> Flan-T5), or None."""
    verb = re.search(r"\b(?:does|do|did)\b", question, re.IGNORECASE)
    if verb is None:
        return None
    names = names_in(question[verb.end() :])
    return names[0] if names else None


# ------------------------------------------------------------------------------------------ patterns


@dataclass(frozen=True)
class _Patterns:
    multi: re.Pattern[str]
    list_question: re.Pattern[str]
    named_thing: re.Pattern[str]
    asks_for_work: re.Pattern[str]
    figure: re.Pattern[str]
    followup_start: re.Pattern[str]
    referring: re.Pattern[str]


@lru_cache(maxsize=1)
def _patterns() -> _Patterns:
    w = words()
    return _Patterns(
        multi=re.compile(rf"\b({alternation(w.multi_paper_nouns)})\b", re.IGNORECASE),
        list_question=re.compile(
            rf"\b(?:{alternation(w.list_openers)})(?:(?:\s+[\w\-]+){{0,3}}?\s+(?:{alternation(w.list_nouns)})"
            rf"|\s+(?:{alternation(w.list_nouns_next)}))\b",
            re.IGNORECASE,
        ),
        named_thing=re.compile(
            r"\b(?:what|which|name (?:the|a|an|one)|tell me (?:the|a|an))\b(?:\s+[\w\-]+){0,6}?\s+"
            rf"(?P<kind>{alternation(w.asked_kinds)})s?\b|\b(?:which|what) (?:works?|papers?|studies)\b",
            re.IGNORECASE,
        ),
        # Questions after a piece of work rather than a fact ("Is there work on ...?", "Instead of A, can B ...?"),
        # or after what something is called.
        asks_for_work=re.compile(
            rf"(?:^|[,;:]\s*)(?:{alternation(w.work_question_openers)})\b"
            r"|\bwhat(?: is|'s| was| are| were)\b[^?]{0,60}?\b(?:called|named)\b",
            re.IGNORECASE,
        ),
        figure=re.compile(
            rf"\bhow (?:{alternation(w.figure_adjectives)})\b|\bwhat (?:[\w\-.]+ ){{0,3}}?(?:{alternation(w.figure_nouns)})s?\b"
            rf"|\b(?:{alternation(w.figure_qualifiers)}|top-?\d+)\s+(?:{alternation(w.figure_metrics)})\b|\bnumber of\b",
            re.IGNORECASE,
        ),
        followup_start=re.compile(rf"^\s*({alternation(w.followup_openers)})\b", re.IGNORECASE),
        referring=re.compile(
            rf"\b({alternation(w.referring_words)}|the ({alternation(w.referring_nouns)}))\b", re.IGNORECASE
        ),
    )


def asked_kind(question: str) -> str | None:
    """The kind of thing a 'what/which ... X' question asks for ('dataset', 'benchmark', 'method'...), if any."""
    match = _patterns().named_thing.search(question)
    return match.group("kind").lower() if match and match.group("kind") else None


def acronym_expansions(text: str) -> list[tuple[str, str]]:
    """Each acronym in brackets with the words it stands for, when their initials spell it: "Direct Preference
    Optimization (DPO)" -> ("DPO", "Direct Preference Optimization"), "mixture-of-experts (MoE)" -> ("MoE",
    "mixture-of-experts")."""
    found = []
    for match in re.finditer(r"\(([A-Za-z][A-Za-z0-9\-]{1,11})\)", text):
        letters = [c.lower() for c in match.group(1) if c.isalpha()]
        before = re.findall(r"[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*", text[: match.start()])
        taken: list[str] = []
        initials: list[str] = []
        for word in reversed(before[-len(letters) :]):
            taken.insert(0, word)
            initials = [part[0].lower() for w in taken for part in w.split("-")]
            if initials == letters:
                found.append((match.group(1), " ".join(taken)))
                break
    return found


# ------------------------------------------------------------------------------------- asked-for phrase

_WH = re.compile(r"\b(how many|how much|what|which)\b\s+(.*)", re.IGNORECASE | re.DOTALL)


def asked_slot(question: str) -> tuple[str, list[list[str]]]:
    """The wh-word and the asked-for noun phrase(s), split at 'and': 'What learning rate and batch size ...'
    -> ('what', [['learning', 'rate'], ['batch', 'size']]). Type words (method, dataset...) end the phrase and
    answer-form words (percentage, factor...) are dropped: they say how an answer looks, not what it is about."""
    w = words()
    match = _WH.search(question.lower())
    if not match:
        return "", []
    wh = match.group(1)
    tokens = [re.sub(r"'s$", "", t).strip(".'") for t in re.findall(r"[a-z0-9][a-z0-9\-.%']*", match.group(2))]
    phrases: list[list[str]] = [[]]
    if wh == "how much" and tokens and tokens[0] in w.auxiliaries:  # "How much did it cost ..." -> the verb phrase
        for t in tokens[1:]:
            if t in w.prepositions:
                break
            phrases[-1].append(t)
    else:
        if tokens and tokens[0] in {"is", "are", "was", "were"}:
            tokens = tokens[1:]
        if tokens and tokens[0] in {"the", "a", "an"}:
            tokens = tokens[1:]
        for t in tokens:
            if t in w.type_words:
                if wh == "how many":  # "How many papers ...": the type word is what is counted
                    phrases[-1].append(t)
                    break
                # "Which in-house model ...": the words before a type word only qualify the kind of thing asked
                # for, and a paper may qualify it in its own words ("our proprietary model").
                return wh, []
            if t in w.auxiliaries or t in w.prepositions or (phrases[-1] and t in w.phrase_verbs):
                break
            if phrases[-1] and t.endswith("ed") and "-" not in t:  # a past-tense verb ends the noun phrase
                break
            if t == "and":
                phrases.append([])
                continue
            phrases[-1].append(t)
            if sum(len(p) for p in phrases) >= 5:
                break
    cleaned = [[t for t in p if t not in w.form_words and terms(t)] for p in phrases]
    return wh, [p for p in cleaned if p]


def counted_words(question: str) -> list[str]:
    """For 'how many': the content words between 'how many' and the first verb, prepositions included in the span."""
    w = words()
    match = re.search(r"\bhow many\b\s+(.*)", question.lower(), re.DOTALL)
    found: list[str] = []
    for t in re.findall(r"[a-z0-9][a-z0-9\-.%']*", match.group(1) if match else ""):
        t = t.strip(".'")
        if t in w.auxiliaries or t in w.phrase_verbs or len(found) >= 8:
            break
        if t not in w.prepositions and t not in w.form_words and terms(t):
            found.append(t)
    return found


# ------------------------------------------------------------------------------------------ follow-ups

# "Google's " before "PaLM" or "multilingual mT5": a name within the next three words, across lower-case modifiers
# but not across a conjunction or preposition ("Meta's models and GPT-4": Meta is asked about).
_POSSESSIVE_OWNER = re.compile(
    r"\b[A-Z][\w\-.]*['’]s\s+(?=(?:(?!(?:and|or|of|in|on|with|for|to|by|from)\b)[a-z][a-z\-]*\s+){0,2}[a-z]*[A-Z0-9])"
)
_CAPITALISED_RUN = re.compile(r"(?<![.?!]\s)(?<!^)\b([A-Z][\w\-.]*(?:\s+[A-Z0-9][\w\-.]*)*)")


def _subject(question: str) -> str:
    """What a question is about: its names and capitalised phrases ('Generative Context Distillation (GCD)')."""
    phrases = [m.group(1) for m in _CAPITALISED_RUN.finditer(question.strip())]
    phrases = [p for p in phrases if p.split()[0].lower() not in words().question_openers or len(p.split()) > 1]
    names = [n for n in names_in(question) if not any(n in p for p in phrases)]
    return ", ".join(dict.fromkeys([*phrases, *names]))


def standalone_question(question: str, history: Sequence[ChatTurn]) -> str:
    """Make a follow-up ('and which dataset did they use?') answerable on its own by naming what the earlier
    questions were about. Deterministic and cheap: a small model is too weak to rewrite reliably."""
    question = question.strip()
    previous = [t.content.strip() for t in history if t.role == "user" and t.content.strip()]
    if not previous:
        return question
    patterns = _patterns()
    followup = bool(patterns.followup_start.match(question)) or (
        not names_in(question) and (bool(patterns.referring.search(question)) or len(question.split()) <= 4)
    )
    if not followup:
        return question
    subject = ""
    for earlier in reversed(previous):
        subject = _subject(earlier)
        if subject:
            break
    if not subject:
        subject = previous[-1].rstrip("?.! ")
    body = patterns.followup_start.sub("", question).strip(" ,") or question
    body = body[0].upper() + body[1:]
    mark = "?" if body.endswith("?") else ""
    return f"{body.rstrip('?.! ')} (about {subject}){mark or '?'}"
