"""Text and numbers that come from outside (CLI arguments, batch lines, API calls, history turns, corpus records),
validated and cleaned once, at the boundary, so nothing past it ever sees an undecodable byte or an out-of-range k.

- Text that is not valid Unicode is refused, never guessed at: Python hands a command-line argument or a file
  that holds bytes that are not UTF-8 over as lone surrogates (U+DC80..U+DCFF), and JSON can spell a lone
  surrogate outright ("\\ud800"); neither can be encoded for the tokenizer, the index or a JSON answer.
- Control characters (NUL and the other C0/C1 codes, but tab and line breaks) are turned into spaces: they carry
  no meaning in a question or an abstract and confuse tokenizers and terminals.
- k, the number of passages, is checked against one range for every front end.
"""

from __future__ import annotations

import re
from typing import Any

from rag.errors import QuestionError

K_MIN, K_MAX = 1, 50

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class InvalidText(ValueError):
    """Text that is not valid Unicode; the message says where and what to do."""


def unicode_problem(text: str) -> str | None:
    """Why `text` cannot be used as Unicode text, or None when it can."""
    bad = _SURROGATE.search(text)
    if bad is None:
        return None
    code = ord(bad.group())
    position = bad.start() + 1
    if 0xDC80 <= code <= 0xDCFF:  # how Python carries a byte that did not decode (surrogateescape)
        return f"character {position} is the byte 0x{code - 0xDC00:02X}, which is not valid UTF-8"
    return f"character {position} is a lone surrogate (U+{code:04X}), which is not valid Unicode"


def clean_text(text: str, what: str = "the text") -> str:
    """`text` with control characters turned into spaces; InvalidText when it is not valid Unicode."""
    problem = unicode_problem(text)
    if problem:
        raise InvalidText(f"{what} is not valid Unicode text: {problem}; save or type it as UTF-8")
    return _CONTROL.sub(" ", text)


def has_real_text(text: str) -> bool:
    """Whether the text holds at least one letter or digit (a record of NULs, dashes or spaces holds none)."""
    return any(c.isalnum() for c in text)


def question_text(value: Any, max_chars: int, what: str = "the question") -> str:
    """A question from any front end: a string (or a bare number, as JSON clients send '12345'), valid Unicode,
    whitespace collapsed, not empty, at most max_chars long. Raises QuestionError saying what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        kind = "nothing" if value is None else type(value).__name__
        raise QuestionError(f"{what} must be text, got {kind}: ask something about the papers")
    try:
        text = clean_text(str(value), what)
    except InvalidText as e:
        raise QuestionError(str(e)) from e
    text = " ".join(text.split())
    if not text or not has_real_text(text):
        raise QuestionError(f"{what} is empty: ask something about the papers")
    if len(text) > max_chars:
        raise QuestionError(f"{what} is {len(text)} characters long; the limit is {max_chars}: shorten it")
    return text


def passages_k(value: Any) -> int | None:
    """k from any front end: None (the configured default) or a whole number from K_MIN to K_MAX."""
    if value is None or value == "":
        return None
    number = value
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if isinstance(number, bool) or not isinstance(number, int) or not K_MIN <= number <= K_MAX:
        raise QuestionError(f"k (passages to retrieve) must be a whole number from {K_MIN} to {K_MAX}, got {value!r}")
    return number
