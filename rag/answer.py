"""Question -> Answer: rewrite a follow-up, retrieve, decide whether the corpus can answer, build a short context,
generate with the model (local, or a model server), then check and attach citations.

`Assistant.stream()` yields, in order: one `query` event (the standalone question), one `passages` event,
`token` events (the model's raw text as it is generated; markers are not yet checked), and one `done` event
whose Answer is final (checked citations, unsupported sentences removed). `ask()` consumes `stream()`.
Errors are raised as RagError subclasses (QuestionError, ModelError, IndexError_...), never yielded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from rag.answerability import gate_signals, unanswerable_reason
from rag.chat_model import ChatModel, chat_model
from rag.citations import check_answer, cite_quotes
from rag.config import Settings
from rag.context import build_context, ensure_question_fits
from rag.errors import ModelError, QuestionError
from rag.extractive import adds_to, extractive_quotes, new_facts, papers_answered, quotes_text
from rag.gate import default_gate
from rag.inputs import InvalidText, clean_text, passages_k, question_text
from rag.listing import NamedFilter, list_answer, qualifying_papers
from rag.prompts import NOT_IN_CORPUS, Prompts
from rag.question import QuestionAnalysis, analyse, list_names
from rag.scoring import SentenceScorer
from rag.sentences import split_sentences
from rag.types import Answer, ChatTurn, ModelInfo, Passage, StreamEvent, Timings

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from rag.retrieval import Retriever

logger = logging.getLogger(__name__)

__all__ = ["NOT_IN_CORPUS", "Assistant"]

class Assistant:
    """Answers questions from the indexed corpus with a local model. Cheap to construct: everything loads lazily."""

    def __init__(self, settings: Settings, retriever: Retriever | None = None, llm: ChatModel | None = None):
        self.settings = settings
        self._retriever = retriever
        self._llm = llm
        self._prompts: Prompts | None = None
        self._scorer: SentenceScorer | None = None
        self._init_lock = threading.Lock()

    # -- lazily built parts

    @property
    def retriever(self) -> Retriever:
        with self._init_lock:
            if self._retriever is None:
                from rag.retrieval import Retriever

                self._retriever = Retriever(self.settings)
            return self._retriever

    @property
    def llm(self) -> ChatModel:
        with self._init_lock:
            if self._llm is None:
                self._llm = chat_model(self.settings)
            return self._llm

    @property
    def prompts(self) -> Prompts:
        with self._init_lock:
            if self._prompts is None:
                self._prompts = Prompts.load(self.settings.prompts_dir)
            return self._prompts

    @property
    def scorer(self) -> SentenceScorer:
        retriever = self.retriever
        with self._init_lock:
            if self._scorer is None:
                self._scorer = SentenceScorer(retriever.embedder, cache_path=self.settings.sentence_vectors_path)
            return self._scorer

    def model_info(self) -> ModelInfo | None:
        try:
            return self.llm.info()
        except ModelError as e:
            logger.warning("model info unavailable: %s", e)
            return None

    def warm_up(self, prefetch: bool = True) -> None:
        """Load the index, the embedder and the model, and run the fixed system prompt once so its KV cache is
        ready: the first question then pays only for its own tokens. With prefetch, also embed the corpus
        sentences not on disk yet (see prefetch_sentences; the web app does that in the background)."""
        self.retriever.search("warm up", k=1)
        llm = self.llm
        system = self.prompts.render("answer_system", not_in_corpus=NOT_IN_CORPUS)
        for _ in llm.stream_chat([{"role": "system", "content": system}, {"role": "user", "content": "Hi"}], max_tokens=1):
            pass
        if prefetch:
            self.prefetch_sentences()

    def prefetch_sentences(self, stop: threading.Event | None = None) -> None:
        """Embed every indexed abstract's sentences once and keep them on disk: a question's context then costs
        no embedding (seconds the first time, milliseconds once the vectors are saved)."""
        papers, limit = self.retriever.paper_count(), self.settings.answer.prefetch_max_papers
        if papers > limit:
            logger.info("%d papers (> prefetch_max_papers %d): sentences are embedded as questions need them", papers, limit)
            return
        sentences = [s for abstract in self.retriever.abstracts() for s in split_sentences(abstract)]
        started = time.perf_counter()
        new = self.scorer.prefetch(sentences, stop=stop)
        if new:
            logger.info("embedded %d new corpus sentences in %.1fs", new, time.perf_counter() - started)
        self.save_caches()

    def save_caches(self) -> None:
        """Persist what answering has learnt that is worth keeping (the sentence vectors)."""
        if self._scorer is not None:
            try:
                self._scorer.save()
            except OSError as e:  # a read-only data dir costs speed, never an answer
                logger.warning("could not save the sentence vectors: %s", e)

    # -- answering

    def ask(
        self,
        question: str,
        history: Sequence[ChatTurn] = (),
        k: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Answer:
        answer = None
        for event in self.stream(question, history, k=k, temperature=temperature, max_tokens=max_tokens):
            if event.kind == "done":
                answer = event.answer
        assert answer is not None  # stream() always ends with done or raises
        return answer

    def _validate(self, question: object) -> str:
        return question_text(question, self.settings.answer.max_question_chars)

    def stream(
        self,
        question: str,
        history: Sequence[ChatTurn] = (),
        k: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[StreamEvent]:
        question = self._validate(question)
        k = passages_k(k)
        history = [t if isinstance(t, ChatTurn) else ChatTurn.model_validate(t) for t in history]
        for turn in history:
            try:
                clean_text(turn.content, f"a {turn.role} turn of the history")
            except InvalidText as e:
                raise QuestionError(str(e)) from e
        return self._stream(question, history, k, temperature, max_tokens)

    def _stream(
        self, question: str, history: list[ChatTurn], k: int | None, temperature: float | None, max_tokens: int | None
    ) -> Iterator[StreamEvent]:
        started = time.perf_counter()
        cfg = self.settings
        temperature = cfg.llm.temperature if temperature is None else temperature
        max_tokens = cfg.llm.max_tokens if max_tokens is None else max_tokens
        asked = analyse(question, history)  # the one analysis of this question, used by every stage below
        standalone = asked.text
        yield StreamEvent(kind="query", text=standalone)

        k = k or cfg.retrieval.k
        named = self._named_filter(asked) if cfg.answer.list_answers and asked.wants_list else None
        listing = named is not None
        if named is not None:  # "Which papers ...": k is a floor for a list, not a cap
            vector = self.retriever.embedder.embed([standalone])[0]
            wide = self.retriever.search(
                standalone, k=max(k, cfg.answer.list_candidates), max_chars=cfg.answer.max_question_chars, vector=vector,
                names=asked.required_names,
            )
            passages = wide + self._mentioning_passages(named, wide, vector)
        else:
            passages = self.retriever.search(
                standalone, k=k, max_chars=cfg.answer.max_question_chars, names=asked.required_names
            )
        timings = Timings(retrieve_s=round(time.perf_counter() - started, 4))
        yield StreamEvent(kind="passages", passages=passages)

        base = dict(
            question=question, standalone_question=standalone, passages=passages,
            model=None if listing else self.model_info(),  # a list answer is quoted, not generated
            index=self.retriever.fingerprint(), prompt_version=self.prompts.version,
        )
        if named is not None:
            yield from self._list(asked, passages, named, base, timings, started)
            return
        ensure_question_fits(standalone, self.llm, self.prompts, cfg.tuning)
        reason = self._abstain_reason(asked, passages)
        if reason:
            logger.info("abstaining on %r: %s", standalone, reason)
            timings.total_s = round(time.perf_counter() - started, 4)
            answer = Answer(answer=NOT_IN_CORPUS, abstained=True, timings=timings, **base)
            yield StreamEvent(kind="done", answer=answer)
            return

        context = build_context(
            asked, passages, scorer=self.scorer, llm=self.llm, prompts=self.prompts, settings=cfg, max_tokens=max_tokens
        )
        pieces: list[str] = []
        for event in self.llm.stream_chat(context.messages, max_tokens=context.max_tokens, temperature=temperature):
            if event.done:
                timings.prompt_tokens = event.stats.prompt_tokens
                timings.completion_tokens = event.stats.completion_tokens
                continue
            if timings.first_token_s is None:
                timings.first_token_s = round(time.perf_counter() - started, 4)
            pieces.append(event.text)
            yield StreamEvent(kind="token", text=event.text)
        raw = "".join(pieces).strip()

        checked = check_answer(raw, context, self.scorer)
        multi = asked.multi
        if not checked.text or not new_facts(checked.text, asked):
            logger.info("the model's answer %r has no supported sentence that adds to the question: quoting", raw[:200])
            fallback = cite_quotes(extractive_quotes(context, multi), context, self.scorer)
            fallback.unsupported = checked.unsupported
            checked = fallback
        elif not multi and context.papers:
            # A 135M model often paraphrases loosely or picks the wrong figure: when its answer leaves out the names or
            # numbers of the most relevant passage sentence, that sentence is quoted after it, cited.
            evidence = extractive_quotes(context, multi=False, papers=[context.papers[0].n], sentences=1)
            if not new_facts(quotes_text(evidence), asked) <= new_facts(checked.text, asked):
                checked = cite_quotes(evidence, context, self.scorer, after=checked)
        elif multi:
            # A question about several papers cites each paper of the context: quote the ones the model left out
            # or only cited for a restatement of the question (which is dropped).
            answered = papers_answered(checked.text, checked.citations, asked)
            missing = [p.n for p in context.papers if p.paper_id not in answered]
            if missing:
                kept = " ".join(s for s in split_sentences(raw) if adds_to(s, asked))
                unsupported = checked.unsupported
                checked = cite_quotes(
                    extractive_quotes(context, multi, papers=missing), context, self.scorer,
                    after=check_answer(kept, context, self.scorer),
                )
                checked.unsupported = unsupported
        timings.total_s = round(time.perf_counter() - started, 4)
        answer = Answer(
            answer=checked.text or NOT_IN_CORPUS,
            abstained=not checked.text,
            citations=checked.citations,
            unsupported=checked.unsupported,
            timings=timings,
            **base,
        )
        yield StreamEvent(kind="done", answer=answer)

    def _named_filter(self, asked: QuestionAnalysis) -> NamedFilter | None:
        """The papers that qualify for a list question: those that mention every name of the question (or an
        acronym's expansion, or a capitalised word; each in one of its forms) which only some papers mention. A
        name counts when at least one paper and fewer than a fifth of them (at least list_max_papers) mention it.
        With no such name, None: the question is answered like any other, by the model from the top papers."""
        most = self.settings.tuning.list_max_papers
        cap = max(most, self.retriever.paper_count() // 5)  # a name this many papers mention sets none apart
        found = {
            group: {p for name in group for p in self.retriever.papers_mentioning(name, cap)} for group in list_names(asked)
        }
        telling = {group: papers for group, papers in found.items() if 0 < len(papers) < cap or 0 < len(papers) <= most}
        if not telling:
            return None
        wanted = set.intersection(*telling.values())  # every telling name, in one of its forms
        names = tuple(n for group in telling for n in group)
        return NamedFilter(papers=frozenset(wanted), names=names, total=len(wanted))

    def _mentioning_passages(self, named: NamedFilter, passages: list[Passage], vector: np.ndarray) -> list[Passage]:
        """The qualifying papers the search did not find, when all of them can be listed (at most list_max_papers):
        found anywhere in the store. When more qualify, the list shows the most relevant of those the search
        found and says how many there are."""
        if named.total > self.settings.tuning.list_max_papers:
            return []
        known = {p.paper_id for p in passages}
        return self.retriever.paper_passages(sorted(named.papers - known), vector, first_rank=len(passages) + 1)

    def _list(
        self, asked: QuestionAnalysis, passages: list[Passage], named: NamedFilter, base: dict,
        timings: Timings, started: float,
    ) -> Iterator[StreamEvent]:
        """A list answer: every candidate paper whose own evidence qualifies it, one cited line each."""
        listed = qualifying_papers(asked, passages, self.scorer, self.settings.tuning, named)
        if not listed:
            logger.info("abstaining on %r: no candidate paper qualifies for the list", asked.text)
            timings.total_s = round(time.perf_counter() - started, 4)
            yield StreamEvent(kind="done", answer=Answer(answer=NOT_IN_CORPUS, abstained=True, timings=timings, **base))
            return
        lines, citations = list_answer(listed, named)
        for line in lines:
            if timings.first_token_s is None:
                timings.first_token_s = round(time.perf_counter() - started, 4)
            yield StreamEvent(kind="token", text=line + "\n")
        timings.total_s = round(time.perf_counter() - started, 4)
        answer = Answer(answer="\n".join(lines), abstained=False, citations=citations, timings=timings, **base)
        yield StreamEvent(kind="done", answer=answer)

    def _abstain_reason(self, question: QuestionAnalysis, passages: list[Passage]) -> str | None:
        if not passages:
            return "no passages (empty index?)"
        if self.settings.answer.gate == "fitted":
            gate = default_gate()
            probability = gate.probability(gate_signals(question, passages))
            if probability < gate.threshold:
                return f"the fitted gate gives P(answerable) {probability:.2f} < {gate.threshold}"
            return None
        best = max(p.similarity for p in passages)
        if best < self.settings.answer.min_relevance:
            return f"best passage similarity {best:.3f} < min_relevance {self.settings.answer.min_relevance}"
        return unanswerable_reason(question, passages)
