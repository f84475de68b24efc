"""The word lists of the answering pipeline, loaded once from rag/words.toml and checked.

Each list is lower-case, non-empty and free of repeats; a list written as one string is split on whitespace,
one written as an array keeps its phrases. A missing, unknown or malformed list is a WordListError naming it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from rag.errors import RagError

WORDS_FILE = Path(__file__).with_name("words.toml")


class WordListError(RagError):
    """rag/words.toml is missing a list, has an unknown one, or a list breaks the rules above."""


@dataclass(frozen=True)
class Words:
    stopwords: frozenset[str]
    abbreviations: frozenset[str]
    number_abbreviations: frozenset[str]
    auxiliaries: frozenset[str]
    prepositions: frozenset[str]
    type_words: frozenset[str]
    form_words: frozenset[str]
    phrase_verbs: frozenset[str]
    number_words: frozenset[str]
    name_affixes: frozenset[str]
    common_capitalised: frozenset[str]
    question_openers: frozenset[str]
    followup_openers: tuple[str, ...]
    referring_words: tuple[str, ...]
    referring_nouns: tuple[str, ...]
    multi_paper_nouns: tuple[str, ...]
    list_openers: tuple[str, ...]
    list_nouns: tuple[str, ...]
    list_nouns_next: tuple[str, ...]
    example_markers: tuple[str, ...]
    contrast_markers: tuple[str, ...]
    asked_kinds: tuple[str, ...]
    introducing_verbs: tuple[str, ...]
    naming_phrases: tuple[str, ...]
    figure_adjectives: tuple[str, ...]
    figure_nouns: tuple[str, ...]
    work_question_openers: tuple[str, ...]
    figure_qualifiers: tuple[str, ...]
    figure_metrics: tuple[str, ...]
    self_references: tuple[str, ...]
    percent_measures: frozenset[str]


def alternation(entries: tuple[str, ...] | frozenset[str]) -> str:
    """A regex alternation of the entries, in their order, each matched literally."""
    return "|".join(re.escape(entry) for entry in entries)


def _entries(name: str, value: object) -> list[str]:
    if isinstance(value, str):
        entries = value.split()
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        entries = [" ".join(v.split()) for v in value]
    else:
        raise WordListError(f"{WORDS_FILE}: {name} must be a string of words or an array of phrases")
    if not entries or any(not e for e in entries):
        raise WordListError(f"{WORDS_FILE}: {name} is empty or has an empty entry")
    if any(e != e.lower() for e in entries):
        raise WordListError(f"{WORDS_FILE}: {name} has upper-case entries: {[e for e in entries if e != e.lower()]}")
    repeated = sorted({e for e in entries if entries.count(e) > 1})
    if repeated:
        raise WordListError(f"{WORDS_FILE}: {name} repeats {repeated}")
    return entries


def load_words(path: Path = WORDS_FILE) -> Words:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise WordListError(f"cannot read the word lists {path}: {e}") from e
    expected = {f.name: f for f in fields(Words)}
    unknown, missing = sorted(set(data) - set(expected)), sorted(set(expected) - set(data))
    if unknown or missing:
        raise WordListError(f"{path}: unknown lists {unknown}, missing lists {missing}")
    values = {}
    for name, field in expected.items():
        entries = _entries(name, data[name])
        values[name] = frozenset(entries) if str(field.type).startswith("frozenset") else tuple(entries)
    return Words(**values)


@lru_cache(maxsize=1)
def words() -> Words:
    return load_words()
