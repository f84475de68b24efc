"""Pydantic models for everything that crosses a boundary (files, index, CLI JSON, UI, API)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Location(BaseModel):
    """Where a paper's abstract text sits: corpus file name and 1-based line."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(description="Corpus file name, e.g. 001_0b21518f7ee75860.txt.")
    line: int = Field(ge=1, description="1-based line of the abstract text in that file.")


class PaperRecord(BaseModel):
    """One abstract as found at one place in one corpus file (before duplicates are merged)."""

    paper_id: str = Field(description="Stable id: a hash of the normalised abstract text.")
    title: str | None = Field(default=None, description="Paper title; None where the file gives none.")
    abstract: str
    authors_count: int | None = None
    date: str | None = Field(default=None, description="Date as the file gives it, e.g. 'Dec 19, 2023' or 'Jun 9'.")
    source: str
    line: int = Field(ge=1)


class Paper(BaseModel):
    """A unique abstract, with every place it was found."""

    paper_id: str
    title: str | None = None
    abstract: str
    authors_count: int | None = None
    date: str | None = None
    locations: list[Location] = Field(min_length=1)

    @property
    def source(self) -> str:
        return self.locations[0].source

    @property
    def line(self) -> int:
        return self.locations[0].line

    @property
    def label(self) -> str:
        """Title, or the first words of an untitled abstract (for display only)."""
        return self.title or display_label(self.abstract)


def display_label(text: str, words: int = 8) -> str:
    parts = text.split()
    label = " ".join(parts[:words])
    return label + ("…" if len(parts) > words else "")


class Chunk(BaseModel):
    """A piece of one abstract: what is embedded and retrieved."""

    chunk_id: str = Field(description="Deterministic id 'paper_id:ordinal'.")
    paper_id: str
    ordinal: int = Field(ge=0)
    text: str = Field(description="The abstract text of this chunk (what is shown and quoted).")
    embed_text: str = Field(description="Text given to the embedder: the title, then the chunk text.")
    title: str | None = None
    source: str
    line: int = Field(ge=1)
    date: str | None = None


class Passage(BaseModel):
    """A retrieved chunk, ranked."""

    rank: int = Field(ge=1, description="1-based rank after fusion.")
    score: float = Field(description="Fused relevance score (reciprocal-rank fusion); higher is better.")
    chunk_id: str
    paper_id: str
    title: str | None = None
    label: str = Field(description="Title, or the first words of the abstract when untitled.")
    source: str
    line: int = Field(ge=1)
    date: str | None = None
    locations: list[Location] = Field(default_factory=list, description="Every place this abstract appears.")
    text: str = Field(description="The whole abstract of the paper.")
    chunk_text: str = Field(default="", description="The chunk of the abstract that matched best.")
    similarity: float = Field(description="Cosine similarity of the question to this chunk, from the embedder.")
    lexical_score: float = Field(default=0.0, description="BM25 score of this chunk (0 when not lexically matched).")


class Citation(BaseModel):
    """A numbered source behind an [n] marker in the answer."""

    n: int = Field(ge=1)
    source: str
    line: int = Field(ge=1)
    paper_id: str
    title: str | None = None
    quote: str = Field(description="The abstract sentence(s) that support the cited claim.")
    score: float = Field(description="Support score of the quote for the claim (cosine similarity, 0..1).")


class ModelInfo(BaseModel):
    """The model that wrote an answer."""

    name: str = Field(description="The GGUF file name, or the model id a model server (RAG_LLM__URL) reports.")
    sha256: str | None = Field(
        description="sha256 of the GGUF file; null when unknown (a model server does not expose its weights)."
    )


class Timings(BaseModel):
    retrieve_s: float = 0.0
    first_token_s: float | None = None
    total_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatTurn(BaseModel):
    role: str = Field(pattern="^(user|assistant)$")
    content: str


class Answer(BaseModel):
    """The result of asking one question."""

    question: str
    standalone_question: str = Field(description="The question after rewriting a follow-up with the chat history.")
    answer: str
    abstained: bool
    citations: list[Citation] = Field(default_factory=list)
    passages: list[Passage] = Field(default_factory=list, description="Retrieved passages in rank order.")
    unsupported: list[str] = Field(
        default_factory=list, description="Answer sentences that no retrieved passage supports (shown uncited)."
    )
    model: ModelInfo | None = None
    index: str = Field(default="", description="Fingerprint of the index the passages came from.")
    prompt_version: str = ""
    timings: Timings = Field(default_factory=Timings)


class BatchRecord(Answer):
    """One line of `rag batch` output: an Answer with its id, or an error for a line that could not be answered."""

    id: str
    error: str | None = None


class IngestSummary(BaseModel):
    records: int
    duplicates: int
    papers: int
    chunks_added: int = Field(description="Chunks embedded and written (new or changed text).")
    chunks_updated: int = Field(default=0, description="Chunks whose metadata changed (e.g. moved line); not re-embedded.")
    chunks_unchanged: int
    chunks_removed: int
    seconds: float


class IndexStatus(BaseModel):
    """What the UI and `rag status` show about the index."""

    papers: int
    chunks: int
    embedder: str
    chunking: str
    fingerprint: str
    last_ingest: str | None = Field(default=None, description="ISO time of the last ingest that changed or checked it.")
    location: str = Field(default="", description="Where the index lives: the embedded store's folder or the Chroma server.")


class StreamEvent(BaseModel):
    """One step of a streamed answer, in order: query, passages, token* , done (or error)."""

    kind: str = Field(pattern="^(query|passages|token|done|error)$")
    text: str = Field(default="", description="query: the standalone question; token: new answer text; error: message.")
    passages: list[Passage] = Field(default_factory=list, description="passages: the retrieved passages.")
    answer: Answer | None = Field(default=None, description="done: the final, citation-checked Answer.")
