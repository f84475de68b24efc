"""Sentence vectors and sentence relevance: the SentenceScorer (embeddings, cached in memory and on disk) and
the score of an abstract sentence for a question (cosine similarity plus weighted term overlap)."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.text import overlap, terms

if TYPE_CHECKING:  # pragma: no cover
    from rag.config import TuningSettings
    from rag.question import QuestionAnalysis

logger = logging.getLogger(__name__)


def _open_cache(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10, check_same_thread=False)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
    except sqlite3.Error:
        db.close()
        raise
    return db


class SentenceScorer:
    """Embeds sentences with the retriever's embedder, caching vectors in memory and, with a cache_path, in SQLite.

    Scoring the ~30 sentences of a question's papers costs about 0.3 s of the 1 s to first token on a 2-core CPU
    when they are not cached yet. The on-disk cache is keyed by embedder and sentence, appended to (never
    rewritten whole), and read only for the sentences a question needs, so it stays cheap for a corpus of any
    size. It is disposable: an unreadable or read-only one is ignored with a warning."""

    def __init__(self, embedder: object, cache_path: Path | None = None, max_cached: int = 50_000):
        self.embedder = embedder
        self.cache_path = cache_path
        self.max_cached = max_cached
        self._cache: dict[str, np.ndarray] = {}
        self._pending: dict[str, np.ndarray] = {}  # computed, not yet written to disk
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._db_failed = cache_path is None

    @property
    def _model_name(self) -> str:
        return str(getattr(self.embedder, "name", type(self.embedder).__name__))

    def _key(self, text: str) -> str:
        return hashlib.sha1(f"{self._model_name}\x1f{text}".encode()).hexdigest()

    def _connection(self) -> sqlite3.Connection | None:
        """The cache database (under the lock); None when there is none or it cannot be used."""
        if self._db is None and not self._db_failed:
            assert self.cache_path is not None
            try:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._db = _open_cache(self.cache_path)
                except sqlite3.DatabaseError as e:  # not a database (an old .npz, a torn file): it is disposable
                    logger.warning("sentence vector cache %s is unreadable (%s): starting it afresh", self.cache_path, e)
                    self.cache_path.unlink()
                    self._db = _open_cache(self.cache_path)
            except (OSError, sqlite3.Error) as e:
                self._db_failed = True
                logger.warning("sentence vector cache %s unusable (%s): vectors are kept in memory only", self.cache_path, e)
        return self._db

    def _read(self, texts: list[str]) -> None:
        """Move the on-disk vectors of these texts into memory (under the lock)."""
        db = self._connection()
        if db is None or not texts:
            return
        keys = {self._key(t): t for t in texts}
        try:
            for start in range(0, len(keys), 500):
                chunk = list(keys)[start : start + 500]
                rows = db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                for key, blob in rows:
                    self._cache[keys[key]] = np.frombuffer(blob, dtype=np.float32).copy()
        except sqlite3.Error as e:
            logger.warning("sentence vector cache %s unreadable (%s): ignored", self.cache_path, e)
            self._db_failed, self._db = True, None

    def _missing(self, texts: Sequence[str]) -> list[str]:
        """The texts with no vector in memory or on disk, once each, in order."""
        with self._lock:
            unknown = list(dict.fromkeys(t for t in texts if t not in self._cache))
            self._read(unknown)
            return [t for t in unknown if t not in self._cache]

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        missing = self._missing(texts)
        if missing:
            computed = np.asarray(self.embedder.embed(missing), dtype=np.float32)  # type: ignore[attr-defined]
            with self._lock:
                if len(self._cache) + len(missing) > self.max_cached:
                    self._cache.clear()
                self._cache.update(zip(missing, computed))
                self._pending.update(zip(missing, computed))
        with self._lock:
            if not texts:
                return np.zeros((0, 1), dtype=np.float32)
            return np.stack([self._cache[t] for t in texts])

    def prefetch(self, texts: Sequence[str], batch_size: int = 64, stop: threading.Event | None = None) -> int:
        """Embed the texts not cached yet (in batches, so questions can interleave, saved as it goes); returns how
        many were new. `stop` ends it between two batches (a server shutting down)."""
        missing = self._missing(texts)
        for start in range(0, len(missing), batch_size):
            if stop is not None and stop.is_set():
                self.save()
                return start
            self.vectors(missing[start : start + batch_size])
            if start // batch_size % 20 == 19:
                self.save()
        return len(missing)

    def save(self) -> None:
        """Append the vectors computed since the last save to the on-disk cache."""
        with self._lock:
            db = self._connection()
            if db is None or not self._pending:
                return
            rows = [(self._key(t), v.astype(np.float32).tobytes()) for t, v in self._pending.items()]
            try:
                with db:
                    db.executemany("INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)", rows)
            except sqlite3.Error as e:
                logger.warning("could not save sentence vectors to %s (%s)", self.cache_path, e)
                return
            self._pending.clear()
        logger.info("sentence vectors: %d saved to %s", len(rows), self.cache_path)

    def similarity(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarities, shape (len(queries), len(texts)); vectors are L2-normalised."""
        if not queries or not texts:
            return np.zeros((len(queries), len(texts)), dtype=np.float32)
        vectors = self.vectors([*queries, *texts])
        return vectors[: len(queries)] @ vectors[len(queries) :].T


def score_sentences(
    question: QuestionAnalysis | str,
    sentences: Sequence[str],
    scorer: SentenceScorer,
    tuning: TuningSettings | None = None,
    title: str | None = None,
) -> list[float]:
    """The relevance of each sentence of one paper (titled `title`) to the question; see `relevance`."""
    from rag.question import as_analysis

    question = as_analysis(question)
    if not sentences:
        return []
    return relevance(question, sentences, scorer.similarity([question.text], list(sentences))[0], tuning, title)


def relevance(
    question: QuestionAnalysis,
    sentences: Sequence[str],
    cosines: Sequence[float],
    tuning: TuningSettings | None = None,
    title: str | None = None,
) -> list[float]:
    """Each sentence's score, for the sentences of one paper; see `paper_scores`."""
    return paper_scores(question, sentences, cosines, tuning, title)[0]


def paper_scores(
    question: QuestionAnalysis,
    sentences: Sequence[str],
    cosines: Sequence[float],
    tuning: TuningSettings | None = None,
    title: str | None = None,
) -> tuple[list[float], float]:
    """The score of each sentence of one paper, and the paper's standing.

    A sentence's score: its cosine to the question, plus lexical_weight times the share of the question's terms it
    holds, plus telling_weight times the share of the question's telling terms it holds. Telling terms do not name
    the paper's subject (in its title, or in most of its sentences), so they tell its sentences apart: for "Into
    which framework did the KMMLU authors integrate their Korean benchmark?" in the KMMLU abstract, "framework" and
    "integrate", not "KMMLU" or "Korean". The standing, comparable across papers, is the best sentence's score
    without the telling part: telling terms are relative to one paper's subject."""
    from rag.config import TuningSettings

    tuning = tuning or TuningSettings()
    sentence_terms = [terms(s) for s in sentences]
    telling = telling_terms(question.terms, sentence_terms, title)
    plain = [float(c) + tuning.lexical_weight * overlap(question.terms, t) for c, t in zip(cosines, sentence_terms)]
    scores = [p + tuning.telling_weight * overlap(telling, t) for p, t in zip(plain, sentence_terms)]
    return scores, max(plain, default=0.0)


def telling_terms(question_terms: frozenset[str], sentence_terms: Sequence[set[str]], title: str | None) -> frozenset[str]:
    """The question's terms that do not name the paper's subject: those that are neither in its title nor in half
    of its sentences or more (and at least two)."""
    subject = terms(title or "")
    common = max(2, len(sentence_terms) / 2)
    return frozenset(
        t for t in question_terms if t not in subject and sum(t in s for s in sentence_terms) < common
    )
