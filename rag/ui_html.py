"""The web app's HTML: answers with [n] markers, the sources panel with highlighted quotes, passages, index status.

Pure functions from the pipeline's types to HTML strings; no Gradio here (rag.ui puts them on the page). Every
piece of corpus, model or user text goes through `esc` before it reaches the page.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from rag.types import Answer, Citation, IndexStatus, Passage

_MARKER = re.compile(r"\s*\[(\d{1,3})\]")
_SENTENCE_END = re.compile(r"[.!?]\s+")

#: The blinking cursor at the end of an answer being written (removed when the answer is stopped).
CURSOR = '<span class="rag-cursor" aria-hidden="true"></span>'


def esc(text: object) -> str:
    """HTML-escape any text from the corpus, the model or the user.

    Braces and dollars are escaped too: gr.HTML renders its value through a template, and no corpus text
    should ever look like template syntax to it.
    """
    escaped = html.escape(str(text), quote=True)
    return escaped.replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;").replace("\n", "<br>")


def _text_spans(text: str, quote: str) -> list[tuple[int, int]]:
    """Where the quote (or each of its sentences) occurs in text, matching across any whitespace."""
    spans: list[tuple[int, int]] = []
    pieces = [quote] + [s for s in re.split(r"(?<=[.!?])\s+", quote) if s != quote]
    for piece in pieces:
        words = piece.split()
        if not words:
            continue
        match = re.search(r"\s+".join(re.escape(w) for w in words), text)
        if match and not any(a < match.end() and match.start() < b for a, b in spans):
            spans.append(match.span())
        if spans and piece is quote:
            break  # the whole quote was found
    return sorted(spans)


def highlight(text: str, quote: str) -> str:
    """The escaped text with the quote marked; a quote not found in the text is shown above it."""
    spans = _text_spans(text, quote) if quote.strip() else []
    if not spans:
        prefix = f'<blockquote class="rag-quote"><mark>{esc(quote)}</mark></blockquote>' if quote.strip() else ""
        return prefix + esc(text)
    return _marked(text, spans, 0, len(text))


def _marked(text: str, spans: list[tuple[int, int]], start: int, end: int) -> str:
    out, pos = [], start
    for a, b in spans:
        out.append(esc(text[pos:a]))
        out.append(f"<mark>{esc(text[a:b])}</mark>")
        pos = b
    out.append(esc(text[pos:end]))
    return "".join(out)


def highlight_excerpt(text: str, quote: str) -> str | None:
    """The quote marked within its neighbouring sentences (one either side), or None when it is not in the text."""
    spans = _text_spans(text, quote) if quote.strip() else []
    if not spans:
        return None
    boundaries = list(_SENTENCE_END.finditer(text))
    before = [m.end() for m in boundaries if m.end() <= spans[0][0]]
    start = before[-2] if len(before) >= 2 else 0
    after = [m.start() + 1 for m in boundaries if m.start() >= spans[-1][1]]
    end = after[0] if after else len(text)
    body = _marked(text, spans, start, end).strip()
    return ("… " if start > 0 else "") + body + (" …" if end < len(text) else "")


def _location(passage: Passage | Citation) -> str:
    return f"{passage.source}:{passage.line}"


def _meta_line(items: Sequence[str]) -> str:
    return '<div class="rag-meta">' + '<span class="rag-dot">·</span>'.join(i for i in items if i) + "</div>"


def _more_locations(passage: Passage | None) -> str:
    if passage is None or len(passage.locations) <= 1:
        return ""
    others = ", ".join(f"{loc.source}:{loc.line}" for loc in passage.locations[1:])
    return f'<span title="also at {esc(others)}">+{len(passage.locations) - 1} more</span>'


def render_query(question: str, standalone: str) -> str:
    """The rewritten standalone query, shown when it differs from what was typed."""
    if not standalone.strip() or standalone.strip() == question.strip():
        return ""
    return f'<div class="rag-query"><span class="rag-query-label">Searched for</span> {esc(standalone)}</div>'


def render_streaming(question: str, standalone: str, text: str, n_passages: int | None) -> str:
    """The answer bubble while tokens arrive."""
    if text:
        body = esc(text) + CURSOR
    elif n_passages is None:
        body = '<span class="rag-muted">Searching the abstracts…</span>'
    else:
        body = f'<span class="rag-muted">Reading {n_passages} passage{"s" * (n_passages != 1)}…</span>'
    return render_query(question, standalone) + f'<div class="rag-answer rag-streaming">{body}</div>'


def _mark_unsupported(body: str, unsupported: Sequence[str]) -> tuple[str, list[str]]:
    """Wrap each unsupported sentence in the escaped body; return the body and the sentences not found."""
    missing = []
    for sentence in unsupported:
        target = esc(sentence.strip())
        if target and target in body:
            span = f'<span class="rag-unsupported" title="No retrieved passage supports this sentence">{target}</span>'
            body = body.replace(target, span, 1)
        elif target:
            missing.append(sentence)
    return body, missing


def _cite_markers(body: str, labels: dict[int, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        n = int(match.group(1))
        title = esc(labels.get(n, "source not found"))
        return f'<sup class="rag-cite" title="{title}">[{n}]</sup>'

    return _MARKER.sub(sub, body)


def render_answer(answer: Answer) -> str:
    """The final, citation-checked answer: [n] markers, unsupported sentences marked, abstention explained."""
    query = render_query(answer.question, answer.standalone_question)
    if answer.abstained:
        n = len(answer.passages)
        nearest = f"The {n} nearest passage{'s' * (n != 1)} are listed under Sources." if n else ""
        return (
            query + '<div class="rag-answer rag-abstained"><div class="rag-abstain-title">Not in the corpus</div>'
            f"{esc(answer.answer)}<div class=\"rag-muted\">{nearest}</div></div>"
        )
    body, missing = _mark_unsupported(esc(answer.answer.strip()), answer.unsupported)
    labels = {c.n: _citation_label(c, answer.passages) for c in answer.citations}
    body = _cite_markers(body, labels)
    notes = ""
    if len(missing) < len(answer.unsupported):
        notes += '<div class="rag-note"><span class="rag-unsupported-key">Dotted</span>: no retrieved passage supports it.</div>'
    if missing:
        items = "".join(f'<li><span class="rag-unsupported">{esc(s)}</span></li>' for s in missing)
        n = len(missing)
        notes += (
            f'<details class="rag-note rag-left-out"><summary>{n} sentence{"s" * (n != 1)} left out: no retrieved '
            f"passage supports {'them' if n != 1 else 'it'}</summary><ul>{items}</ul></details>"
        )
    if not answer.citations:
        notes += '<div class="rag-note">No sentence of this answer could be tied to a passage.</div>'
    return query + f'<div class="rag-answer">{body}</div>' + notes


def _passage_for(paper_id: str, passages: Sequence[Passage]) -> Passage | None:
    return next((p for p in passages if p.paper_id == paper_id), None)


def _citation_label(citation: Citation, passages: Sequence[Passage]) -> str:
    passage = _passage_for(citation.paper_id, passages)
    return passage.label if passage else (citation.title or citation.source)


def _citation_card(citation: Citation, passages: Sequence[Passage]) -> str:
    passage = _passage_for(citation.paper_id, passages)
    label = _citation_label(citation, passages)
    abstract = passage.text if passage else ""
    meta = _meta_line(
        [
            f"<code>{esc(_location(citation))}</code>",
            _more_locations(passage),
            esc(passage.date) if passage and passage.date else "",
            f'<span title="how well the quote supports the cited sentence">support {citation.score:.2f}</span>',
            f'<span title="retrieval rank and fused score">rank {passage.rank} · score {passage.score:.4f}</span>'
            if passage
            else "",
        ]
    )
    untitled = "" if citation.title or (passage and passage.title) else ' <span class="rag-muted">(untitled)</span>'
    return (
        f'<article class="rag-card rag-cited" data-n="{citation.n}">'
        f'<div class="rag-card-head"><span class="rag-n">{citation.n}</span>'
        f'<span class="rag-title">{esc(label)}{untitled}</span></div>{meta}'
        f"{_quoted_abstract(abstract, citation.quote)}</article>"
    )


def _quoted_abstract(abstract: str, quote: str) -> str:
    """The supporting sentences marked in context, then the whole abstract (marked too) on demand."""
    excerpt = highlight_excerpt(abstract, quote)
    if excerpt is None:
        return f'<div class="rag-abstract">{highlight(abstract or quote, quote)}</div>'
    return (
        f'<div class="rag-excerpt">{excerpt}</div>'
        f'<details class="rag-full"><summary>Full abstract</summary><div class="rag-abstract">{highlight(abstract, quote)}</div></details>'
    )


def _passage_card(passage: Passage) -> str:
    meta = _meta_line(
        [
            f"<code>{esc(_location(passage))}</code>",
            _more_locations(passage),
            esc(passage.date) if passage.date else "",
            f'<span title="fused retrieval score">score {passage.score:.4f}</span>',
            f'<span title="cosine similarity of the question to the best chunk">similarity {passage.similarity:.2f}</span>',
        ]
    )
    untitled = "" if passage.title else ' <span class="rag-muted">(untitled)</span>'
    return (
        f'<article class="rag-card" data-rank="{passage.rank}">'
        f'<div class="rag-card-head"><span class="rag-rank">#{passage.rank}</span>'
        f'<span class="rag-title">{esc(passage.label)}{untitled}</span></div>{meta}'
        f'<div class="rag-abstract">{esc(passage.text)}</div></article>'
    )


def render_sources(answer: Answer | None) -> str:
    """The sources panel: each cited paper with its supporting quote highlighted, or the nearest passages."""
    if answer is None:
        return (
            '<div class="rag-sources rag-empty"><div class="rag-panel-title">Sources</div>'
            '<p class="rag-muted">Ask a question: the papers behind the answer appear here, with the '
            "supporting sentences highlighted.</p></div>"
        )
    if answer.abstained:
        cards = "".join(_passage_card(p) for p in answer.passages) or '<p class="rag-muted">Nothing was retrieved.</p>'
        return (
            '<div class="rag-sources rag-abstained-sources"><div class="rag-panel-title">Nearest passages</div>'
            f'<p class="rag-muted">None of these answers the question.</p>{cards}</div>'
        )
    if not answer.citations:
        return (
            '<div class="rag-sources"><div class="rag-panel-title">Sources</div>'
            '<p class="rag-muted">The answer cites no passage; the retrieved ones are below.</p></div>'
        )
    cards = "".join(_citation_card(c, answer.passages) for c in answer.citations)
    return f'<div class="rag-sources"><div class="rag-panel-title">Sources</div>{cards}</div>'


def render_retrieving(passages: Sequence[Passage]) -> str:
    """The sources panel while the answer is written: what was retrieved, citations still to come."""
    items = "".join(
        f'<li><span class="rag-title">{esc(p.label)}</span> <code>{esc(_location(p))}</code></li>' for p in passages
    )
    return (
        '<div class="rag-sources"><div class="rag-panel-title">Sources</div>'
        f'<p class="rag-muted">Writing the answer from {len(passages)} retrieved passages…</p>'
        f'<ol class="rag-retrieving">{items}</ol></div>'
    )


def render_other_passages(answer: Answer | None) -> str:
    """Retrieved passages that the answer does not cite (shown in an accordion, on demand)."""
    if answer is None:
        return '<p class="rag-muted">No question asked yet.</p>'
    if answer.abstained:
        return '<p class="rag-muted">Every retrieved passage is shown above.</p>'
    cited = {c.paper_id for c in answer.citations}
    others = [p for p in answer.passages if p.paper_id not in cited]
    if not others:
        return '<p class="rag-muted">Every retrieved passage is cited.</p>'
    return '<div class="rag-sources">' + "".join(_passage_card(p) for p in others) + "</div>"


def render_index_status(status: IndexStatus | None, error: str | None = None) -> str:
    if status is None:
        return f'<div class="rag-index rag-index-missing"><strong>No usable index.</strong> {esc(error or "")}</div>'
    rows = [
        ("Papers", f"{status.papers:,}"),
        ("Chunks", f"{status.chunks:,}"),
        ("Embedder", status.embedder),
        ("Chunking", status.chunking),
        ("Last ingest", status.last_ingest or "never"),
        ("Fingerprint", status.fingerprint),
    ]
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="rag-index">{body}</table>'


def render_error(message: str) -> str:
    return f'<div class="rag-answer rag-error"><strong>Could not answer.</strong> {esc(message)}</div>'


STOPPED_NOTE = '<div class="rag-note rag-stopped">Stopped.</div>'
