"""The prompt's context: the most relevant sentences of the top papers, numbered [1], [2]..., within a token budget.

A small model reads a short, sharp context far better than whole abstracts, and every prompt token costs time
to first token, so sentences are scored against the question (rag.scoring), the best ones are kept in their
original order per paper, and the prompt is measured with the model's own tokenizer and chat template so that
prompt + max_tokens never exceeds n_ctx.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from rag.config import Settings, TuningSettings
from rag.errors import QuestionError
from rag.generation import ChatModel, Message
from rag.prompts import NOT_IN_CORPUS, Prompts, neutralise
from rag.question import QuestionAnalysis, analyse, as_analysis
from rag.scoring import SentenceScorer, paper_scores
from rag.sentences import split_sentences
from rag.types import Passage

logger = logging.getLogger(__name__)


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
    def text(self) -> str:
        return " ".join(self.sentences[i] for i in self.chosen)


@dataclass
class Context:
    question: str
    papers: list[PaperContext]
    messages: list[Message]
    prompt_tokens: int
    max_tokens: int
    analysis: QuestionAnalysis = None  # type: ignore[assignment] - analysed from `question` when not given
    tuning: TuningSettings = field(default_factory=TuningSettings)

    def __post_init__(self) -> None:
        if self.analysis is None:
            self.analysis = analyse(self.question)

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


def select_papers(
    question: QuestionAnalysis | str, passages: Sequence[Passage], scorer: SentenceScorer, settings: Settings
) -> list[PaperContext]:
    """The top papers whose best sentence is close to the best one, numbered 1..m in order of relevance."""
    question = as_analysis(question)
    tuning = settings.tuning
    candidates = paper_texts(passages)[: settings.answer.context_papers]
    papers: list[PaperContext] = []
    standings: dict[str, float] = {}  # each paper's relevance, comparable across papers
    for best, sentences in candidates:
        cosines = scorer.similarity([question.text], sentences)[0]
        scores, standings[best.paper_id] = paper_scores(question, sentences, cosines, tuning, best.title)
        papers.append(
            PaperContext(
                n=0, paper_id=best.paper_id, title=best.title, label=best.label, source=best.source, line=best.line,
                similarity=best.similarity, sentences=sentences, scores=scores,
            )
        )
    if not papers:
        return []
    if question.multi:
        # Several papers are asked for: the two whose best sentences are most relevant, and any close third.
        ranked = sorted(papers, key=lambda p: -standings[p.paper_id])
        second = standings[ranked[1].paper_id] if len(ranked) > 1 else 0.0
        kept = ranked[:2] + [p for p in ranked[2:] if standings[p.paper_id] >= second - tuning.multi_paper_margin]
    else:
        # The retriever's best paper always stays; another joins when its best sentence is nearly as relevant.
        top = max(standings.values())
        kept = [papers[0]] + [p for p in papers[1:] if standings[p.paper_id] >= top - tuning.paper_margin]
        kept = kept[:2]
    for n, paper in enumerate(kept, start=1):
        paper.n = n
    return kept


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


def ensure_question_fits(question: str, llm: ChatModel, prompts: Prompts, tuning: TuningSettings | None = None) -> None:
    """Refuse a question that leaves no room in the model's window for a short answer and one passage, before
    anything else is decided about it (an abstention would hide that the question itself is the problem)."""
    tuning = tuning or TuningSettings()
    overhead = llm.count_chat_tokens(render_messages(question, [], prompts))
    if overhead + tuning.min_answer_tokens + tuning.passage_overhead > llm.n_ctx:
        raise QuestionError(
            f"the question is too long for the model's context window ({overhead} prompt tokens of {llm.n_ctx}): "
            "shorten it"
        )


def build_context(
    question: QuestionAnalysis | str,
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
    question = as_analysis(question)
    n_ctx = llm.n_ctx
    tuning = settings.tuning
    passage_overhead, min_answer_tokens = tuning.passage_overhead, tuning.min_answer_tokens
    papers = select_papers(question, passages, scorer, settings)
    overhead = llm.count_chat_tokens(render_messages(question.text, [], prompts))
    # A run-on sentence of an abstract longer than the window is cut to fit, so it is never blamed on the question.
    longest = n_ctx - overhead - min_answer_tokens - passage_overhead - 1
    if longest < 1:
        raise QuestionError(
            f"the question is too long for the model's context window ({overhead} prompt tokens of {n_ctx}): shorten it"
        )
    for paper in papers:
        paper.sentences = [fit_sentence(s, longest, llm) for s in paper.sentences]
    smallest = min((llm.count_tokens(s) for p in papers[:1] for s in p.sentences), default=0) + 1 + passage_overhead
    if overhead + max_tokens + smallest > n_ctx:
        max_tokens = max(min_answer_tokens, n_ctx - overhead - smallest)
    if overhead + max_tokens + smallest > n_ctx:
        raise QuestionError(
            f"the question is too long for the model's context window ({overhead} prompt tokens of {n_ctx}): shorten it"
        )
    budget = n_ctx - max_tokens

    order: list[tuple[float, int, int]] = []
    multi = question.multi
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
        cost = tokens + (0 if paper.chosen else passage_overhead)
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
        messages = render_messages(question.text, shown, prompts)
        prompt_tokens = llm.count_chat_tokens(messages)
        if prompt_tokens + max_tokens <= n_ctx or not shown:
            break
        _drop_weakest(shown)
    if prompt_tokens + max_tokens > n_ctx:  # pragma: no cover - overhead was checked above
        raise QuestionError(f"the question is too long for the model's context window ({n_ctx} tokens): shorten it")
    logger.debug("context: %d papers, %d sentences, %d prompt tokens", len(shown), sum(len(p.chosen) for p in shown), prompt_tokens)
    return Context(question=question.text, papers=shown, messages=messages, prompt_tokens=prompt_tokens,
                   max_tokens=max_tokens, analysis=question, tuning=tuning)


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
