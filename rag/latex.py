"""LaTeX markup left in scraped arXiv abstracts, turned into the text it stands for.

arXiv listing pages show abstracts as their authors typed them, so a few carry markup: `96.4\\%`, `360{\\deg}`,
`"{SkillNet}"`, `\\emph{not}`, `G{\\"o}del`. Left in, it shows up in quoted citations and hides names and figures
from the question analysis ("{SkillNet}" is no name; "96.4\\%" no percentage).

Only markup that cannot be plain prose is rewritten. A full LaTeX parser (pylatexenc) is not used on purpose: it
reads a bare "%" as the start of a comment and a bare "$" as math, so "a 15% gain on ..." loses the rest of its
sentence, and most abstracts are plain text. Inline math (`$R^3$`) is left as written.
"""

from __future__ import annotations

import re
import unicodedata

_ESCAPED = re.compile(r"\\([%&_#$])")  # \% -> %
_SYMBOLS = {
    "deg": "°", "circ": "°", "times": "×", "pm": "±", "approx": "≈", "sim": "~", "leq": "≤", "geq": "≥",
    "le": "≤", "ge": "≥", "ldots": "…", "dots": "…", "cdot": "·", "textendash": "–", "textemdash": "—",
}
_SYMBOL = re.compile(r"\{?\\(" + "|".join(sorted(_SYMBOLS, key=len, reverse=True)) + r")(?![A-Za-z])\}?(?:\{\})?")
_TEXT_COMMAND = re.compile(r"\\(?:textbf|textit|textsc|texttt|textrm|emph|underline|mathrm|mathbf|text|url)\{([^{}\\]*)\}")
_ACCENTS = {
    '"': "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", "=": "\u0304", ".": "\u0307",
    "H": "\u030b", "v": "\u030c", "u": "\u0306", "c": "\u0327", "k": "\u0328", "r": "\u030a",
}
# \"u, {\"u}, \"{u}, \'e; a letter accent takes its letter braced or after a space: \H{o}, \c c
_ACCENT = re.compile(r"\{?\\(?:([\"'`^~=.])\{?([A-Za-z])|([Hvuckr])(?:\{([A-Za-z])\}|\s+([A-Za-z])))\}?")
_BRACED_WORD = re.compile(r"\{([^{}\\\s]+)\}")  # "{SkillNet}", Wukong{ViT-B}: grouping braces around one word


def plain_text(text: str) -> str:
    """`text` with LaTeX escapes, symbols, accents, text commands and grouping braces turned into plain text;
    text without a backslash or a brace is returned unchanged."""
    if "\\" not in text and "{" not in text:
        return text
    text = _ESCAPED.sub(r"\1", text)
    text = _SYMBOL.sub(lambda m: _SYMBOLS[m.group(1)], text)
    text = _TEXT_COMMAND.sub(r"\1", text)
    text = _ACCENT.sub(_accented, text)
    return _BRACED_WORD.sub(r"\1", text)


def _accented(match: re.Match[str]) -> str:
    accent = match.group(1) or match.group(3)
    letter = match.group(2) or match.group(4) or match.group(5)
    return unicodedata.normalize("NFC", letter + _ACCENTS[accent])
