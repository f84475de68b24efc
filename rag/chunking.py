"""Paper -> Chunks: sentence-aware, title prepended for embedding, deterministic ids 'paper_id:ordinal'."""

from __future__ import annotations

from rag.config import ChunkingSettings
from rag.sentences import split_sentences
from rag.types import Chunk, Paper


def _word_count(text: str) -> int:
    return len(text.split())


def _group_sentences(sentences: list[str], max_words: int, overlap: int) -> list[list[str]]:
    groups: list[list[str]] = []
    current: list[str] = []
    words = 0
    for sentence in sentences:
        n = _word_count(sentence)
        if current and words + n > max_words:
            groups.append(current)
            carried = current[-overlap:] if overlap else []
            # Never carry so much that the carried part alone fills the chunk.
            while carried and sum(map(_word_count, carried)) + n > max_words:
                carried = carried[1:]
            current, words = list(carried), sum(map(_word_count, carried))
        current.append(sentence)
        words += n
    if current:
        groups.append(current)
    return groups


def chunk_paper(paper: Paper, settings: ChunkingSettings) -> list[Chunk]:
    """An abstract that fits stays one chunk; a longer one is split on sentences with overlap."""
    if _word_count(paper.abstract) <= settings.max_words:
        groups = [[paper.abstract]]
    else:
        groups = _group_sentences(split_sentences(paper.abstract), settings.max_words, settings.overlap_sentences)
    chunks = []
    for ordinal, group in enumerate(groups):
        text = " ".join(group)
        embed_text = f"{paper.title}. {text}" if paper.title else text
        chunks.append(
            Chunk(
                chunk_id=f"{paper.paper_id}:{ordinal}",
                paper_id=paper.paper_id,
                ordinal=ordinal,
                text=text,
                embed_text=embed_text,
                title=paper.title,
                source=paper.source,
                line=paper.line,
                date=paper.date,
            )
        )
    return chunks


def chunk_papers(papers: list[Paper], settings: ChunkingSettings) -> list[Chunk]:
    return [chunk for paper in papers for chunk in chunk_paper(paper, settings)]


def chunking_signature(settings: ChunkingSettings) -> str:
    """What is stored on the collection so that a change of chunking forces a clear rebuild."""
    return f"sentences-v1:max_words={settings.max_words}:overlap={settings.overlap_sentences}"
