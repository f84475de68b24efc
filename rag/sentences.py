"""Splitting prose into sentences: one splitter for chunking, context building and citation checking."""

from __future__ import annotations

import re

from rag.words import words

_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_LEADING_MARKERS = re.compile(r"^(?:\s*\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\])+(?:\s*[.!?](?=\s|$))?")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences; abbreviations (e.g., et al., Fig.) and initials do not end one.

    A run of citation markers after a full stop ("... 75%. [1]") stays with the sentence before it.
    """
    text = " ".join(text.split())
    if not text:
        return []
    abbreviations = words().abbreviations  # "e.g.", "et al.", "Fig." do not end a sentence
    number_abbreviations = words().number_abbreviations  # "No. 5" continues; "... is no. The paper" ends one
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        before = text[start : match.start()].rstrip("\"')]")
        last_word = before.rsplit(" ", 1)[-1].rstrip(".!?").lower()
        if last_word in abbreviations or (len(last_word) == 1 and last_word.isalpha()):
            continue
        if last_word in number_abbreviations and text[match.end() : match.end() + 1].isdigit():
            continue
        sentences.append(text[start : match.start()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    merged: list[str] = []
    for sentence in sentences:
        lead = _LEADING_MARKERS.match(sentence)
        if merged and lead:
            merged[-1] = f"{merged[-1]} {lead.group(0).strip()}"
            sentence = sentence[lead.end() :].strip()
        if sentence:
            merged.append(sentence)
    return merged
