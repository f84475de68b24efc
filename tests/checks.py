"""Assertions shared by the test files (plain functions, imported as `from checks import ...`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rag.latex import plain_text

ELLIPSIS = "…"


def _normalised(text: str) -> str:
    return " ".join(text.split())


def _as_dict(answer: Any) -> Mapping[str, Any]:
    if isinstance(answer, Mapping):
        return answer
    return answer.model_dump()


def assert_citations_verbatim(answer: Any, corpus_dir: Path) -> None:
    """Every citation's quote occurs, word for word, in the corpus file line it names, as the parser reads it
    (LaTeX markup as plain text, see rag.latex: "360{\\deg}" is quoted "360°").

    `answer` is an Answer (or BatchRecord) or its JSON dict. The line is 1-based, as the citation gives it;
    whitespace is normalised on both sides. A quote cut short ends in '…': then its text before the '…' must occur.
    """
    data = _as_dict(answer)
    for citation in data.get("citations") or []:
        source, line, quote = citation["source"], citation["line"], citation["quote"]
        where = f"[{citation.get('n')}] {source}:{line}"
        path = Path(corpus_dir) / source
        assert path.is_file(), f"{where}: no such corpus file {path}"
        lines = path.read_text(encoding="utf-8").splitlines()
        assert 1 <= line <= len(lines), f"{where}: {source} has {len(lines)} lines"
        wanted = _normalised(quote)
        if wanted.endswith(ELLIPSIS):
            wanted = wanted[: -len(ELLIPSIS)].rstrip()
        assert wanted, f"{where}: empty quote {quote!r}"
        text = _normalised(plain_text(lines[line - 1]))
        assert wanted in text, f"{where}: quote not in that line\n  quote: {quote!r}\n  line:  {text[:400]!r}"
