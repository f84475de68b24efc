"""The prompt's context: the most relevant sentences of the top papers, numbered [1], [2]..., within a token budget.

A 135M model reads a short, sharp context far better than whole abstracts, and every prompt token costs time
to first token, so sentences are scored against the question (embedding similarity plus lexical overlap),
the best ones are kept in their original order per paper, and the prompt is measured with the model's own
tokenizer and chat template so that prompt + max_tokens never exceeds n_ctx.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from rag.config import Settings
from rag.errors import QuestionError
from rag.llm import ChatModel, Message
from rag.prompts import NOT_IN_CORPUS, Prompts, neutralise
from rag.sentences import split_sentences
from rag.types import Passage

logger = logging.getLogger(__name__)

LEXICAL_WEIGHT = 0.35  # weight of question-term overlap next to cosine similarity in sentence scores
PAPER_MARGIN = 0.12  # a paper after the first joins the context if its best sentence scores within this of the top
MULTI_PAPER_MARGIN = 0.05  # a third paper joins a multi-paper question's two best if it scores within this of the second
PASSAGE_OVERHEAD = 24  # estimated tokens of a <passage id=n> block's tags and title line
MIN_ANSWER_TOKENS = 48  # max_tokens is never shrunk below this to make room for passages

# ------------------------------------------------------------------------------------------ text utils

_MULTI = re.compile(r"\b(papers|works|studies|articles)\b", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z0-9]+(?:[.,'\-/][A-Za-z0-9]+)*%?")
_STOPWORDS = frozenset(
    """a an the and or but if then than of to in on at by for with from into onto over under about as is are was were
    be been being do does did done doing have has had having it its it's this that these those there their they them
    he she his her we our us you your i me my what which who whom whose when where why how much many can could
    would should will shall may might must not no nor so such very also just only any all each both few more most
    other some own same too s t up down out off again further once here via per using use used uses based paper
    papers work works study propose proposed proposes introduce introduced introduces present presents approach
    method methods model models new show shows shown well one two while whether without within between through""".split()
)


@lru_cache(maxsize=1)
def _stemmer():  # noqa: ANN202 - PyStemmer has no type hints
    try:
        import Stemmer

        return Stemmer.Stemmer("english")
    except ImportError:  # pragma: no cover - PyStemmer is a dependency; degrade to no stemming
        return None


def terms(text: str) -> set[str]:
    """Content terms of a text: lower-cased, stemmed words and numbers, stopwords dropped."""
    stemmer = _stemmer()
    found: set[str] = set()
    for word in _WORD.findall(text.lower()):
        word = word.strip(".,'-/")
        if not word or word in _STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        found.add(stemmer.stemWord(word) if stemmer is not None and word.isalpha() else word)
    return found


def overlap(question_terms: set[str], text_terms: set[str]) -> float:
    """Share of the question's terms found in the text (0 when the question has none)."""
    if not question_terms:
        return 0.0
    return len(question_terms & text_terms) / len(question_terms)


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


# ------------------------------------------------------------------------------------------- context


@dataclass
class PaperContext:
    """One numbered paper in the prompt."""

    n: int
    paper_id: str
    title: str | None
    label: str
    source: str
    line: int
    similarity: float  # best passage cosine similarity to the question
    sentences: list[str]  # every sentence of the retrieved text of this paper, in order
    scores: list[float]  # relevance of each sentence to the question
    chosen: list[int] = field(default_factory=list)  # indices of the sentences put into the prompt, ascending

    @property
    def best_score(self) -> float:
        return max(self.scores, default=0.0)

    @property
    def text(self) -> str:
        return " ".join(self.sentences[i] for i in self.chosen)


@dataclass
class Context:
    question: str
    papers: list[PaperContext]
    messages: list[Message]
    prompt_tokens: int
    max_tokens: int

    def paper(self, n: int) -> PaperContext | None:
        return next((p for p in self.papers if p.n == n), None)


def paper_texts(passages: Sequence[Passage]) -> list[tuple[Passage, list[str]]]:
    """One entry per paper, in rank order: its best passage and the sentences of its whole abstract."""
    seen: set[str] = set()
    result: list[tuple[Passage, list[str]]] = []
    for passage in sorted(passages, key=lambda p: p.rank):
        if passage.paper_id in seen:
            continue
        seen.add(passage.paper_id)
        sentences = list(dict.fromkeys(split_sentences(passage.text or passage.chunk_text)))
        result.append((passage, sentences))
    return result


def score_sentences(question: str, sentences: Sequence[str], scorer: SentenceScorer) -> list[float]:
    """Cosine similarity to the question plus a weighted share of the question's terms present in the sentence."""
    if not sentences:
        return []
    cosine = scorer.similarity([question], list(sentences))[0]
    q_terms = terms(question)
    return [float(c) + LEXICAL_WEIGHT * overlap(q_terms, terms(s)) for c, s in zip(cosine, sentences)]


def select_papers(question: str, passages: Sequence[Passage], scorer: SentenceScorer, settings: Settings) -> list[PaperContext]:
    """The top papers whose best sentence is close to the best one, numbered 1..m in order of relevance."""
    candidates = paper_texts(passages)[: settings.answer.context_papers]
    papers: list[PaperContext] = []
    for best, sentences in candidates:
        papers.append(
            PaperContext(
                n=0, paper_id=best.paper_id, title=best.title, label=best.label, source=best.source, line=best.line,
                similarity=best.similarity, sentences=sentences, scores=score_sentences(question, sentences, scorer),
            )
        )
    if not papers:
        return []
    if is_multi_paper_question(question):
        # Several papers are asked for: the two whose best sentences are most relevant, and any close third.
        ranked = sorted(papers, key=lambda p: -p.best_score)
        kept = ranked[:2] + [p for p in ranked[2:] if len(ranked) > 1 and p.best_score >= ranked[1].best_score - MULTI_PAPER_MARGIN]
    else:
        # The retriever's best paper always stays; another joins when its best sentence is nearly as relevant.
        top = max(p.best_score for p in papers)
        kept = [papers[0]] + [p for p in papers[1:] if p.best_score >= top - PAPER_MARGIN]
        kept = kept[:2]
    for n, paper in enumerate(kept, start=1):
        paper.n = n
    return kept


def is_multi_paper_question(question: str) -> bool:
    """'Which papers ...', 'Are there works ...': the answer may need several papers."""
    return bool(_MULTI.search(question))


def render_messages(question: str, papers: Sequence[PaperContext], prompts: Prompts) -> list[Message]:
    """System instructions first (constant, so their KV cache is reused), then the passages and the question."""
    blocks = [
        prompts.render(
            "passage",
            n=p.n,
            heading=f"Title: {neutralise(p.title)}\n" if p.title else "",
            text=neutralise(p.text),
        )
        for p in papers
        if p.chosen
    ]
    return [
        {"role": "system", "content": prompts.render("answer_system", not_in_corpus=NOT_IN_CORPUS)},
        {"role": "user", "content": prompts.render("answer_user", passages="\n".join(blocks), question=neutralise(question))},
    ]


def ensure_question_fits(question: str, llm: ChatModel, prompts: Prompts) -> None:
    """Refuse a question that leaves no room in the model's window for a short answer and one passage, before
    anything else is decided about it (an abstention would hide that the question itself is the problem)."""
    overhead = llm.count_chat_tokens(render_messages(question, [], prompts))
    if overhead + MIN_ANSWER_TOKENS + PASSAGE_OVERHEAD > llm.n_ctx:
        raise QuestionError(
            f"the question is too long for the model's context window ({overhead} prompt tokens of {llm.n_ctx}): "
            "shorten it"
        )


def build_context(
    question: str,
    passages: Sequence[Passage],
    *,
    scorer: SentenceScorer,
    llm: ChatModel,
    prompts: Prompts,
    settings: Settings,
    max_tokens: int,
) -> Context:
    """Choose sentences by relevance until the sentence limit or the token budget (n_ctx - max_tokens) is reached.

    Raises QuestionError when the question alone leaves no room for an answer and one sentence of context.
    """
    n_ctx = llm.n_ctx
    papers = select_papers(question, passages, scorer, settings)
    overhead = llm.count_chat_tokens(render_messages(question, [], prompts))
    # A run-on sentence of an abstract longer than the window is cut to fit, so it is never blamed on the question.
    longest = n_ctx - overhead - MIN_ANSWER_TOKENS - PASSAGE_OVERHEAD - 1
    if longest < 1:
        raise QuestionError(
            f"the question is too long for the model's context window ({overhead} prompt tokens of {n_ctx}): shorten it"
        )
    for paper in papers:
        paper.sentences = [fit_sentence(s, longest, llm) for s in paper.sentences]
    smallest = min((llm.count_tokens(s) for p in papers[:1] for s in p.sentences), default=0) + 1 + PASSAGE_OVERHEAD
    if overhead + max_tokens + smallest > n_ctx:
        max_tokens = max(MIN_ANSWER_TOKENS, n_ctx - overhead - smallest)
    if overhead + max_tokens + smallest > n_ctx:
        raise QuestionError(
            f"the question is too long for the model's context window ({overhead} prompt tokens of {n_ctx}): shorten it"
        )
    budget = n_ctx - max_tokens

    order: list[tuple[float, int, int]] = []
    multi = is_multi_paper_question(question)
    for pi, paper in enumerate(papers):
        ranked = sorted(range(len(paper.sentences)), key=lambda i: -paper.scores[i])
        first = 10.0 if (pi == 0 or multi) else 0.0
        order.extend((paper.scores[i] + (first if rank == 0 else 0.0), pi, i) for rank, i in enumerate(ranked))
    # The best paper's best sentence (each paper's, for a multi-paper question) goes in whatever its length;
    # the rest by score within the text budget.
    order.sort(key=lambda t: -t[0])

    used = overhead
    text_tokens = 0
    count = 0
    for priority, pi, i in order:
        first_of_paper = priority >= 10.0
        if count >= settings.answer.context_sentences and not first_of_paper:
            break
        paper = papers[pi]
        tokens = llm.count_tokens(paper.sentences[i]) + 1
        cost = tokens + (0 if paper.chosen else PASSAGE_OVERHEAD)
        if used + cost > budget:
            continue
        if not first_of_paper and text_tokens + tokens > settings.answer.context_tokens:
            continue
        paper.chosen.append(i)
        used += cost
        text_tokens += tokens
        count += 1
    for paper in papers:
        paper.chosen.sort()

    while True:
        shown = _renumber([p for p in papers if p.chosen])
        messages = render_messages(question, shown, prompts)
        prompt_tokens = llm.count_chat_tokens(messages)
        if prompt_tokens + max_tokens <= n_ctx or not shown:
            break
        _drop_weakest(shown)
    if prompt_tokens + max_tokens > n_ctx:  # pragma: no cover - overhead was checked above
        raise QuestionError(f"the question is too long for the model's context window ({n_ctx} tokens): shorten it")
    logger.debug("context: %d papers, %d sentences, %d prompt tokens", len(shown), sum(len(p.chosen) for p in shown), prompt_tokens)
    return Context(question=question, papers=shown, messages=messages, prompt_tokens=prompt_tokens, max_tokens=max_tokens)


def _longest_fitting(n: int, fits) -> int:  # noqa: ANN001 - fits: Callable[[int], bool], monotone
    """The largest m in 0..n with fits(m) true (fits(0) is assumed), by binary search."""
    low, high = 0, n
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def fit_sentence(sentence: str, max_tokens: int, llm: ChatModel) -> str:
    """The sentence, or its longest word prefix that fits in max_tokens followed by '…' (still a verbatim quote)."""
    if llm.count_tokens(sentence) <= max_tokens:
        return sentence
    words = sentence.split()
    kept = _longest_fitting(len(words), lambda m: llm.count_tokens(" ".join(words[:m]) + "…") <= max_tokens)
    if kept == 0:  # one "word" longer than the window (a run of symbols): cut it by characters
        text = words[0] if words else sentence
        chars = _longest_fitting(len(text), lambda m: llm.count_tokens(text[:m] + "…") <= max_tokens)
        return text[: max(chars, 1)] + "…"
    logger.info("cut a %d-word sentence to %d words to fit the context window", len(words), kept)
    return " ".join(words[:kept]) + "…"


def _renumber(papers: list[PaperContext]) -> list[PaperContext]:
    for n, paper in enumerate(papers, start=1):
        paper.n = n
    return papers


def _drop_weakest(papers: list[PaperContext]) -> None:
    weakest = min(
        ((paper.scores[i], paper, i) for paper in papers for i in paper.chosen), key=lambda t: t[0], default=None
    )
    if weakest is not None:
        weakest[1].chosen.remove(weakest[2])


# ------------------------------------------------------------------------------------- answerability
# A question about a paper in the corpus can still ask for something its abstract never says ("How many GPUs
# were used to train NV-Embed?"). Retrieval similarity is high for such questions, so the assistant also checks
# that the passages mention what is asked: the question's names, and the head noun of the asked-for slot.

_AUX = frozenset("do does did is are was were can could has have had will would should may might".split())
_PREP = frozenset("of for in on to from by with that which who whom at over under between than when where as into across".split())
_TYPE_WORDS = frozenset(
    """method methods approach approaches framework frameworks technique techniques model models system systems
    dataset datasets benchmark benchmarks algorithm algorithms paper papers work works study studies suite suites
    toolkit toolkits library libraries tool tools project projects task tasks corpus corpora""".split()
)
_FORM_WORDS = frozenset(
    "percentage percent factor fraction share range level number amount proportion ratio way ways kind type extent "
    "count value score scores figure margin gap difference".split()
)
# Verbs that end a wh-phrase but look like nouns to the suffix test ("what prompt formatting seems to trigger it").
_PHRASE_VERBS = frozenset(
    """seem seems appear appears tend tends help helps make makes cause causes trigger triggers lead leads allow
    allows let lets give gives beat beats reach reaches achieve achieves outperform outperforms improve improves
    enable enables perform performs need needs get gets work works add adds took take takes made gave got ran
    won saw found chose held led wrote built brought""".split()
)
_NUMBER_WORDS = frozenset(
    """one two three four five six seven eight nine ten eleven twelve dozen dozens hundred hundreds thousand thousands
    million millions billion billions trillion trillions""".split()
)
_WH = re.compile(r"\b(how many|how much|what|which)\b\s+(.*)", re.IGNORECASE | re.DOTALL)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-.]*[A-Za-z0-9]|[A-Za-z0-9]")
_STANDALONE_NUMBER = re.compile(r"(?<![A-Za-z0-9\-.])\d[\d,.]*")


def question_names(question: str) -> list[str]:
    """Tokens that name something specific: with a digit or an inner capital (NV-Embed, Qwen2.5, MMLU, GPT-4)."""
    return [w for w in _NAME.findall(question) if any(c.isdigit() for c in w) or any(c.isupper() for c in w[1:])]


def asked_slot(question: str) -> tuple[str, list[list[str]]]:
    """The wh-word and the asked-for noun phrase(s), split at 'and': 'What learning rate and batch size ...'
    -> ('what', [['learning', 'rate'], ['batch', 'size']]). Type words (method, dataset...) end the phrase and
    answer-form words (percentage, factor...) are dropped: they say how an answer looks, not what it is about."""
    match = _WH.search(question.lower())
    if not match:
        return "", []
    wh = match.group(1)
    words = [re.sub(r"'s$", "", w).strip(".'") for w in re.findall(r"[a-z0-9][a-z0-9\-.%']*", match.group(2))]
    phrases: list[list[str]] = [[]]
    if wh == "how much" and words and words[0] in _AUX:  # "How much did it cost ..." -> the verb phrase
        for w in words[1:]:
            if w in _PREP:
                break
            phrases[-1].append(w)
    else:
        if words and words[0] in {"is", "are", "was", "were"}:
            words = words[1:]
        if words and words[0] in {"the", "a", "an"}:
            words = words[1:]
        for w in words:
            if w in _TYPE_WORDS:
                if wh == "how many":  # "How many papers ...": the type word is what is counted
                    phrases[-1].append(w)
                    break
                # "Which in-house model ...": the words before a type word only qualify the kind of thing asked
                # for, and a paper may qualify it in its own words ("our proprietary model").
                return wh, []
            if w in _AUX or w in _PREP or (phrases[-1] and w in _PHRASE_VERBS):
                break
            if phrases[-1] and w.endswith("ed") and "-" not in w:  # a past-tense verb ends the noun phrase
                break
            if w == "and":
                phrases.append([])
                continue
            phrases[-1].append(w)
            if sum(len(p) for p in phrases) >= 5:
                break
    cleaned = [[w for w in p if w not in _FORM_WORDS and terms(w)] for p in phrases]
    return wh, [p for p in cleaned if p]


def _mentions(word: str, text_terms: set[str]) -> bool:
    """Whether a question word is found among a text's terms (stem, hyphen parts, or a shared 6-letter prefix)."""
    word_terms = terms(word)
    if not word_terms or word_terms & text_terms:
        return True
    parts = [p for p in re.split(r"[-/]", word) if len(p) > 1]
    if len(parts) > 1 and all(any(t.startswith(p[:4]) for t in text_terms) for p in parts):
        return True
    stem = next(iter(word_terms))
    return len(stem) >= 5 and any(len(t) >= 5 and (t.startswith(stem[:6]) or stem.startswith(t[:6])) for t in text_terms)


def _has_number(sentence: str) -> bool:
    return bool(_STANDALONE_NUMBER.search(sentence)) or bool(set(re.findall(r"[a-z]+", sentence.lower())) & _NUMBER_WORDS)


def unanswerable_reason(question: str, passages: Sequence[Passage]) -> str | None:
    """Why the passages cannot answer the question (None when they may): a name of the question absent from the
    top passages, or the asked-for thing (head noun of the wh-phrase) absent from the papers the question is about."""
    ranked = sorted(passages, key=lambda p: p.rank)
    if not ranked:
        return "no passages"
    texts = [f"{p.title or ''} {p.text}" for p in ranked[:3]]
    names = question_names(question)
    joined = " ".join(texts).lower()
    missing = [n for n in names if not _name_in(n, joined)]
    if missing:
        return f"not mentioned in the passages: {', '.join(missing)}"
    wh, phrases = asked_slot(question)
    if wh == "how many" and not any(_has_number(s) for p in ranked[:2] for s in split_sentences(p.text)):
        return "no passage gives any number"  # whatever the question calls the counted thing
    if not phrases or not _names_its_paper(question, texts[0]):
        # A question that does not name its paper may paraphrase the abstract's words: an asked-for word the
        # passages lack is then no evidence that the answer is missing.
        return None
    # The papers the question is about: the best one, plus those naming every name of the question.
    about = [0] + [i for i in range(1, len(texts)) if names and all(_name_in(n, texts[i].lower()) for n in names)]
    if not names:
        about = list(range(min(2, len(texts))))
    paper_terms = [terms(texts[i]) for i in about]
    heads = [p[-1] for p in phrases]
    for head in heads:
        if not any(_mentions(head, t) for t in paper_terms):
            return f"the passages never mention {head!r}"
    words = [w for p in phrases for w in p]
    coverage = max(sum(_mentions(w, t) for w in words) / len(words) for t in paper_terms)
    if coverage < 0.5:
        return f"the passages barely mention {' '.join(words)!r}"
    if wh == "how many":
        # "How many NL-to-TL pairs ...": any word of the counted phrase, up to its verb, may be the one counted.
        counted = _counted_words(question) or heads
        sentences = [s for i in about for s in split_sentences(ranked[i].text)]
        if not any(_counts(s, counted) for s in sentences):
            return f"no passage gives a number of {heads[-1]!r}"
    return None


_NAME_AFFIXES = frozenset("based style like level driven specific powered only free aware tuned sized family series".split())


def _name_in(name: str, text: str) -> bool:
    """Whether a name of the question occurs in a (lower-cased) text. A generic affix is not part of the name
    ("T5-based" is found as "T5"); a hyphenated name without digits is also found by its parts ("LLM-optimization"),
    but one with digits only as written ("top-5" is not "top-1 ... 5-meter")."""
    parts = [p for p in name.lower().split("-") if p]
    core = "-".join(p for p in parts if p not in _NAME_AFFIXES) or name.lower()
    if core in text or ("-" in core and (core.replace("-", "") in text or core.replace("-", " ") in text)):
        # "GPT-2" is also written "GPT2", "length-100" also "length 100"
        return True
    if any(c.isdigit() for c in core) or "-" not in core or any(len(p) < 2 for p in core.split("-")):
        return False  # "ROUGE-L" is not "ROUGE ... (l)"
    return all(re.search(rf"(?<![a-z0-9]){re.escape(p)}(?![a-z0-9])", text) for p in core.split("-"))


def _names_its_paper(question: str, top_text: str) -> bool:
    """Whether a name of the question (NV-Embed, GPT-4) or a capitalised word after its first (Dolma, Flacuna)
    occurs in the best passage: the question is then about that paper, not a paraphrase of some abstract."""
    capitalised = [w for w in _NAME.findall(question)[1:] if w[0].isupper()]
    top = top_text.lower()
    return any(n.lower() in top for n in [*question_names(question), *capitalised])


def _counts(sentence: str, counted: Sequence[str], window: int = 4) -> bool:
    """Whether the sentence puts a number before one of the counted words, at most `window` words ahead of it
    ("35,030 expert-level multiple-choice questions", "28K NL-TL pairs"), not merely somewhere in the sentence."""
    tokens = list(re.finditer(r"[A-Za-z0-9][A-Za-z0-9\-.,%']*", sentence))
    for i, match in enumerate(tokens):
        word = match.group(0)
        bare = word.rstrip(".,%")
        if not (_STANDALONE_NUMBER.fullmatch(bare) or word.lower() in _NUMBER_WORDS or re.fullmatch(r"\d[\d.,]*[KMBTkmbt]", bare)):
            continue
        if sentence[match.end() : match.end() + 1] == ")" or (bare.isdigit() and len(bare) == 1 and word.endswith(".")):
            continue  # a list label: "(1) question generation", "1. questions"
        ahead = [t.group(0) for t in tokens[i + 1 : i + 1 + window]]
        if any(_mentions(c, terms(w)) for c in counted for w in ahead):
            return True
    return False


def _counted_words(question: str) -> list[str]:
    """The content words between 'how many' and the first verb, prepositions included in the span."""
    match = re.search(r"\bhow many\b\s+(.*)", question.lower(), re.DOTALL)
    words: list[str] = []
    for w in re.findall(r"[a-z0-9][a-z0-9\-.%']*", match.group(1) if match else ""):
        w = w.strip(".'")
        if w in _AUX or w in _PHRASE_VERBS or len(words) >= 8:
            break
        if w not in _PREP and w not in _FORM_WORDS and terms(w):
            words.append(w)
    return words
