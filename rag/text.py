"""Text primitives shared by retrieval, question analysis, context, citations and the extractive answer:
content terms (one stemmer), numbers, names, and the [n] citation markers. No state, no model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from rag.words import words

WORD = re.compile(r"[A-Za-z0-9]+(?:[.,'\-/][A-Za-z0-9]+)*%?")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-.]*[A-Za-z0-9]|[A-Za-z0-9]")
NUMBER = re.compile(r"(?<![A-Za-z0-9\-.])\d[\d,.]*\d|(?<![A-Za-z0-9\-.])\d")
STANDALONE_NUMBER = re.compile(r"(?<![A-Za-z0-9\-.])\d[\d,.]*")
MARKER = re.compile(
    r"\s*\[\s*(?:passages?|sources?|refs?\.?|id\s*=?)?\s*(\d+(?:\s*(?:,|;|and|&|-|–)\s*\d+)*)\s*\]", re.IGNORECASE
)


@lru_cache(maxsize=1)
def stemmer():  # noqa: ANN201 - PyStemmer has no type hints
    """The English Snowball stemmer, shared by BM25 and term overlap."""
    import Stemmer

    return Stemmer.Stemmer("english")


def terms(text: str) -> set[str]:
    """Content terms of a text: lower-cased, stemmed words and numbers, stopwords dropped."""
    stem = stemmer()
    stopwords = words().stopwords
    found: set[str] = set()
    for word in WORD.findall(text.lower()):
        word = word.strip(".,'-/")
        if not word or word in stopwords or (len(word) < 2 and not word.isdigit()):
            continue
        found.add(stem.stemWord(word) if word.isalpha() else word)
    return found


def overlap(question_terms: set[str] | frozenset[str], text_terms: set[str]) -> float:
    """Share of the question's terms found in the text (0 when the question has none)."""
    if not question_terms:
        return 0.0
    return len(question_terms & text_terms) / len(question_terms)


def numbers_in(text: str) -> set[str]:
    """The numbers written in a text, normalised ("35,030" -> "35030", "3." -> "3")."""
    return {n.replace(",", "").rstrip(".") for n in NUMBER.findall(text)}


def figures(text: str) -> set[str]:
    """The numbers of a text that can answer "how many / how large": percentages, ratios, decimals and whole
    numbers from 10 up, but not years, nor bare single digits (mostly list labels such as "1.)")."""
    found = set()
    for number in numbers_in(text):
        digits = number.rstrip("%xX")
        if number != digits or "." in digits:
            found.add(number)
        elif digits.isdigit() and int(digits) >= 10 and not 1900 <= int(digits) <= 2100:
            found.add(number)
    return found


def has_number(sentence: str) -> bool:
    """Whether a sentence gives any number, in digits or in words."""
    return bool(STANDALONE_NUMBER.search(sentence)) or bool(set(re.findall(r"[a-z]+", sentence.lower())) & words().number_words)


def names_in(text: str) -> list[str]:
    """Tokens that name something specific: with a digit or an inner capital (NV-Embed, Qwen2.5, MMLU, GPT-4)."""
    return [w for w in NAME.findall(text) if any(c.isdigit() for c in w) or any(c.isupper() for c in w[1:])]


def name_in(name: str, text: str) -> bool:
    """Whether a name occurs in a (lower-cased) text. A generic affix is not part of the name ("T5-based" is found
    as "T5"); a hyphenated name without digits is also found by its parts ("LLM-optimization"), but one with
    digits only as written ("top-5" is not "top-1 ... 5-meter")."""
    parts = [p for p in name.lower().split("-") if p]
    core = "-".join(p for p in parts if p not in words().name_affixes) or name.lower()
    forms = [core, core.replace("-", ""), core.replace("-", " ")] if "-" in core else [core]
    if any(_occurs(form, text) for form in forms):  # "GPT-2" is also written "GPT2", "length-100" also "length 100"
        return True
    if any(c.isdigit() for c in core) or "-" not in core or any(len(p) < 2 for p in core.split("-")):
        return False  # "ROUGE-L" is not "ROUGE ... (l)"
    return all(re.search(rf"(?<![a-z0-9]){re.escape(p)}(?![a-z0-9])", text) for p in core.split("-"))


def _occurs(name: str, text: str) -> bool:
    """Whether the name occurs in the text, not as the start of a longer version number: "GPT-3" is not in
    "GPT-3.5" nor in "GPT-35"."""
    if not name[-1].isdigit():
        return name in text
    return re.search(rf"{re.escape(name)}(?!\d|\.\d)", text) is not None


def name_pattern(name: str) -> str:
    """A case-insensitive regex (Rust and Python syntax) that finds a name as a whole word, its hyphens optional
    ("BIG-Bench" finds "BIG-bench" and "big bench"; "GPT-2" finds "GPT2"; words may be spaced or hyphenated),
    without a generic affix ("T5-based"), and a name ending in a number not as part of a longer version ("GPT-3"
    does not find "GPT-3.5"). The match may take in the character after the name."""
    parts = [p for p in re.split(r"[-\s]+", name.lower()) if p]
    parts = [p for p in parts if p not in words().name_affixes] or parts
    body = r"[-\s]?".join(re.escape(p) for p in parts)
    start = r"\b" if parts[0][0].isalnum() else ""
    end = r"s?\b" if parts[-1][-1].isalpha() else ""  # "LLM" finds "LLMs"
    if parts[-1][-1].isdigit():  # a whole number: "GPT-3" does not find "GPT-3.5" (no look-ahead in Rust's syntax)
        end = r"(?:$|[^\w.]|\.$|\.[^0-9])"
    return f"(?i){start}{body}{end}"


def mentions(word: str, text_terms: set[str]) -> bool:
    """Whether a question word is found among a text's terms (stem, hyphen parts, or a shared 6-letter prefix)."""
    word_terms = terms(word)
    if not word_terms or word_terms & text_terms:
        return True
    parts = [p for p in re.split(r"[-/]", word) if len(p) > 1]
    if len(parts) > 1 and all(any(t.startswith(p[:4]) for t in text_terms) for p in parts):
        return True
    stem = next(iter(word_terms))
    return len(stem) >= 5 and any(len(t) >= 5 and (t.startswith(stem[:6]) or stem.startswith(t[:6])) for t in text_terms)


def mentions_any(sentence: str, names: Sequence[str]) -> bool:
    """Whether the sentence holds one of the names as a whole word (case-insensitive)."""
    return any(re.search(rf"(?<![\w\-]){re.escape(name)}(?![\w\-])", sentence, re.IGNORECASE) for name in names)


def marker_numbers(group: str) -> list[int]:
    """'1, 2' -> [1, 2]; '1-3' -> [1, 2, 3]."""
    numbers: list[int] = []
    for part in re.split(r"\s*(?:,|;|and|&)\s*", group):
        bounds = re.split(r"\s*[-–]\s*", part.strip())
        if len(bounds) == 2 and bounds[0].isdigit() and bounds[1].isdigit() and 0 <= int(bounds[1]) - int(bounds[0]) <= 10:
            numbers.extend(range(int(bounds[0]), int(bounds[1]) + 1))
        elif bounds[0].isdigit():
            numbers.append(int(bounds[0]))
    return list(dict.fromkeys(numbers))


def cited_numbers(sentence: str) -> list[int]:
    """The passage numbers a sentence's [n] markers cite, in order."""
    return list(dict.fromkeys(n for m in MARKER.finditer(sentence) for n in marker_numbers(m.group(1))))


def strip_markers(text: str) -> str:
    return " ".join(MARKER.sub("", text).split())
