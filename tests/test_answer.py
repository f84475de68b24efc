"""The Assistant end to end: the real index and the real default model, plus a scripted model for the logic."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from checks import assert_citations_verbatim
from rag.answer import NOT_IN_CORPUS, Assistant
from rag.question import standalone_question
from rag.config import PROJECT_ROOT, AnswerSettings, LLMSettings, Settings
from rag.errors import QuestionError
from rag.llm import GenerationEvent, GenerationStats
from rag.types import ChatTurn, ModelInfo

KMMLU_Q = "How many expert-level multiple-choice questions does the KMMLU Korean benchmark contain?"
KMMLU_SOURCE = ("003_ce4bc02b0d96118d.txt", 4)
CORPUS = PROJECT_ROOT / "corpus"


class ScriptedLLM:
    """A ChatModel that 'generates' a fixed text, word by word, and records every prompt it is given."""

    def __init__(self, script: str = "", n_ctx: int = 2048):
        self.script = script
        self.n_ctx = n_ctx
        self.calls: list[list[dict[str, str]]] = []

    def info(self) -> ModelInfo:
        return ModelInfo(name="scripted.gguf", sha256="0" * 64)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def count_chat_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    def stream_chat(self, messages, *, max_tokens: int, temperature: float = 0.0) -> Iterator[GenerationEvent]:
        self.calls.append(list(messages))
        words = self.script.split(" ")
        for i, word in enumerate(words):
            yield GenerationEvent(text=word if i == 0 else " " + word)
        yield GenerationEvent(done=True, stats=GenerationStats(prompt_tokens=self.count_chat_tokens(messages),
                                                               completion_tokens=len(words), first_token_s=0.0))


class ForbiddenLLM(ScriptedLLM):
    def stream_chat(self, messages, *, max_tokens: int, temperature: float = 0.0):
        raise AssertionError("the model must not be called when abstaining")


@pytest.fixture(scope="module")
def assistant(ingested_settings, retriever) -> Assistant:
    """The real default model (SmolLM2-135M) on the real index."""
    return Assistant(ingested_settings, retriever=retriever)


def _scripted(ingested_settings, retriever, script: str) -> tuple[Assistant, ScriptedLLM]:
    llm = ScriptedLLM(script)
    return Assistant(ingested_settings, retriever=retriever, llm=llm), llm


# -- follow-ups (no model)


def test_standalone_question_names_what_the_conversation_is_about():
    history = [
        ChatTurn(role="user", content="What is Generative Context Distillation (GCD)?"),
        ChatTurn(role="assistant", content="GCD is a prompt internalization method [1]."),
    ]
    rewritten = standalone_question("and which dataset did they use?", history)
    assert rewritten.startswith("Which dataset did they use")
    assert "Generative Context Distillation" in rewritten and "GCD" in rewritten
    assert standalone_question("How many questions does KMMLU have?", history) == "How many questions does KMMLU have?"
    assert standalone_question("and which dataset did they use?", []) == "and which dataset did they use?"


# -- input validation


def test_empty_or_overlong_question_is_a_question_error(ingested_settings, retriever):
    assistant, llm = _scripted(ingested_settings, retriever, "x")
    for bad in ("", "   \n"):
        with pytest.raises(QuestionError, match="empty"):
            assistant.ask(bad)
    with pytest.raises(QuestionError, match="limit"):
        assistant.ask("why " * 1000)
    assert not llm.calls


# -- abstention (no model call)


@pytest.mark.parametrize(
    "question",
    [
        "What oven temperature and proofing time work best for baking sourdough bread?",
        "How many GPUs were used to train the NV-Embed generalist embedding model?",
    ],
)
def test_unanswerable_question_abstains_without_calling_the_model(ingested_settings, retriever, question):
    assistant = Assistant(ingested_settings, retriever=retriever, llm=ForbiddenLLM())
    answer = assistant.ask(question)
    assert answer.abstained and answer.answer == NOT_IN_CORPUS
    assert not answer.citations and answer.passages  # the nearest passages are still shown
    assert_citations_verbatim(answer, CORPUS)
    assert answer.timings.first_token_s is None and answer.timings.prompt_tokens == 0


# -- citation logic with a scripted model


def test_invented_markers_are_removed_and_unsupported_sentences_kept_apart(ingested_settings, retriever):
    assistant, llm = _scripted(
        ingested_settings, retriever,
        "KMMLU contains 35,030 expert-level multiple-choice questions [1]. It was written by aliens on Mars [3].",
    )
    answer = assistant.ask(KMMLU_Q)
    assert len(llm.calls) == 1
    assert not answer.abstained
    assert "[3]" not in answer.answer and "aliens" not in answer.answer
    assert any("aliens" in s for s in answer.unsupported)
    assert "35,030" in answer.answer
    assert [(c.source, c.line) for c in answer.citations] == [KMMLU_SOURCE]
    assert answer.citations[0].n == 1 and "35,030" in answer.citations[0].quote
    assert_citations_verbatim(answer, CORPUS)


def test_a_restating_or_empty_generation_falls_back_to_a_grounded_quote(ingested_settings, retriever):
    for script in ("", "The KMMLU Korean benchmark contains expert-level multiple-choice questions."):
        assistant, _ = _scripted(ingested_settings, retriever, script)
        answer = assistant.ask(KMMLU_Q)
        assert "35,030" in answer.answer and not answer.abstained
        assert [(c.source, c.line) for c in answer.citations] == [KMMLU_SOURCE]
        assert_citations_verbatim(answer, CORPUS)


def test_the_prompt_puts_fixed_instructions_first_and_passages_as_data(ingested_settings, retriever):
    assistant, llm = _scripted(ingested_settings, retriever, "KMMLU has 35,030 questions [1].")
    assert_citations_verbatim(assistant.ask(KMMLU_Q), CORPUS)
    system, user = llm.calls[0]
    assert system["role"] == "system" and NOT_IN_CORPUS in system["content"]
    assert "<passage id=1>" in user["content"] and user["content"].rstrip().endswith(KMMLU_Q)
    assert_citations_verbatim(assistant.ask("What is the KMMLU benchmark collected from?"), CORPUS)
    assert llm.calls[1][0] == system  # identical prefix: llama.cpp reuses its KV cache


def test_a_multi_paper_question_cites_each_paper_used(ingested_settings, retriever):
    assistant, _ = _scripted(ingested_settings, retriever, "")
    answer = assistant.ask("Which papers introduce large language models built specifically for the Korean language?")
    assert not answer.abstained
    assert len({c.paper_id for c in answer.citations}) >= 2
    assert [c.n for c in answer.citations] == list(range(1, len(answer.citations) + 1))
    assert_citations_verbatim(answer, CORPUS)


KOREAN_PAPERS = {("000_984080258767f917.txt", 2), ("003_ce4bc02b0d96118d.txt", 2), ("003_ce4bc02b0d96118d.txt", 4)}


def test_a_which_papers_question_lists_every_qualifying_paper_without_the_model(ingested_settings, retriever):
    """Three abstracts of the bundled corpus are about Korean (EXAONE 3.0, HyperCLOVA X, KMMLU; checked by grep).
    A list answer names each with a quoted, cited sentence; it is extractive, so the model is never called."""
    assistant = Assistant(ingested_settings, retriever=retriever, llm=ForbiddenLLM())
    answer = assistant.ask("Which papers in my collection deal with the Korean language?", k=3)
    assert not answer.abstained and answer.model is None
    assert len(answer.passages) >= ingested_settings.answer.list_candidates  # k is a floor for lists, not a cap
    assert KOREAN_PAPERS <= {(c.source, c.line) for c in answer.citations}, answer.answer
    assert [c.n for c in answer.citations] == list(range(1, len(answer.citations) + 1))
    assert all(f"[{c.n}]" in answer.answer for c in answer.citations)
    assert_citations_verbatim(answer, CORPUS)
    assert answer.timings.first_token_s is not None and answer.timings.prompt_tokens == 0


SUPERGLUE_PAPERS = {("001_0b21518f7ee75860.txt", line) for line in (69, 173, 201, 205)}  # grep -w -i superglue


def test_a_list_question_naming_something_lists_every_paper_that_mentions_it(ingested_settings, retriever):
    """A name only some papers mention is looked up in the whole store, not only in the search's top k."""
    assistant = Assistant(ingested_settings, retriever=retriever, llm=ForbiddenLLM())
    answer = assistant.ask("Which papers report results on SuperGLUE?", k=2)
    assert {(c.source, c.line) for c in answer.citations} == SUPERGLUE_PAPERS, answer.answer
    assert answer.answer.startswith("4 papers") and all("superglue" in c.quote.lower() for c in answer.citations)
    assert_citations_verbatim(answer, CORPUS)


def test_a_list_question_naming_something_many_papers_mention_lists_the_most_relevant_and_says_how_many(
    ingested_settings, retriever
):
    """More papers mention GPT-4 than a list shows (10): the answer says how many, and lists the most relevant of
    those the search found, each quoted where it names GPT-4."""
    assistant = Assistant(ingested_settings, retriever=retriever, llm=ForbiddenLLM())
    answer = assistant.ask("Which papers compare open models against GPT-4 as a judge of answers?")
    heading = answer.answer.splitlines()[0]
    assert heading.startswith(("11 papers", "12 papers", "13 papers", "14 papers")) and "mention GPT-4" in heading, heading
    assert 1 <= len(answer.citations) <= ingested_settings.tuning.list_max_papers
    assert all("gpt-4" in c.quote.lower() for c in answer.citations), [c.quote for c in answer.citations]
    assert_citations_verbatim(answer, CORPUS)


def test_a_list_question_about_nothing_in_the_corpus_abstains(ingested_settings, retriever):
    assistant = Assistant(ingested_settings, retriever=retriever, llm=ForbiddenLLM())
    answer = assistant.ask("Which papers describe recipes for baking sourdough bread at home?")
    assert answer.abstained and answer.answer == NOT_IN_CORPUS and not answer.citations


def test_acronym_expansions_count_as_names_of_a_list_question():
    from rag.question import analyse

    assert analyse("Which papers build on a mixture-of-experts (MoE) design?").aliases == (("MoE", "mixture-of-experts"),)
    assert analyse("Which papers use Direct Preference Optimization (DPO)?").aliases == (
        ("DPO", "Direct Preference Optimization"),
    )
    assert analyse("Which papers use the KILT (knowledge) benchmark?").aliases == ()


def test_follow_up_is_rewritten_before_retrieval(ingested_settings, retriever):
    assistant, _ = _scripted(ingested_settings, retriever, "")
    history = [ChatTurn(role="user", content="What is the KMMLU benchmark?"), ChatTurn(role="assistant", content="A benchmark [1].")]
    answer = assistant.ask("and how many questions does it have?", history=history)
    assert "KMMLU" in answer.standalone_question
    assert (answer.passages[0].source, answer.passages[0].line) == KMMLU_SOURCE
    assert not answer.abstained and KMMLU_SOURCE in [(c.source, c.line) for c in answer.citations], answer.answer
    assert_citations_verbatim(answer, CORPUS)


# -- the real default model


@pytest.mark.llm
def test_answerable_question_gets_a_cited_answer_from_the_real_model(assistant):
    events = list(assistant.stream(KMMLU_Q))
    kinds = [e.kind for e in events]
    assert kinds[0] == "query" and kinds[1] == "passages" and kinds[-1] == "done"
    assert set(kinds[2:-1]) <= {"token"} and len(kinds) > 3
    answer = events[-1].answer
    assert not answer.abstained and answer.citations
    assert "35,030" in answer.answer
    assert all(f"[{c.n}]" in answer.answer for c in answer.citations)
    assert (answer.citations[0].source, answer.citations[0].line) == KMMLU_SOURCE
    passage_places = {(p.source, p.line) for p in answer.passages}
    assert all((c.source, c.line) in passage_places for c in answer.citations)
    assert_citations_verbatim(answer, CORPUS)
    assert answer.model.name.endswith(".gguf") and len(answer.model.sha256) == 64
    assert answer.index and answer.prompt_version
    t = answer.timings
    assert t.prompt_tokens > 0 and t.completion_tokens > 0 and t.first_token_s is not None
    assert 0 < t.retrieve_s <= t.first_token_s <= t.total_s


@pytest.mark.llm
def test_same_input_gives_the_same_answer(assistant):
    question = "What success rate do prompted gpt-3.5 or gpt-4 agents reach on the compositional web tasks of CompWoB?"
    first, second = assistant.ask(question), assistant.ask(question)
    assert first.answer == second.answer
    assert [c.model_dump() for c in first.citations] == [c.model_dump() for c in second.citations]
    assert not first.abstained and first.citations, first.answer
    assert_citations_verbatim(first, CORPUS)


@pytest.mark.llm
def test_token_budget_holds_for_a_very_long_question_and_a_small_context(ingested_settings, retriever):
    settings = ingested_settings.model_copy(update={
        "llm": LLMSettings(n_ctx=512, max_tokens=192),
        "answer": AnswerSettings(max_question_chars=100_000),
    })
    assistant = Assistant(settings, retriever=retriever)
    answer = assistant.ask(KMMLU_Q + " Please be precise." * 20)
    assert answer.timings.prompt_tokens + answer.timings.completion_tokens <= 512
    assert not answer.abstained and answer.citations, answer.answer  # a small budget shortens the answer, never drops it
    assert_citations_verbatim(answer, CORPUS)
    with pytest.raises(QuestionError, match="too long"):
        assistant.ask("KMMLU " + "questions benchmark Korean " * 400)


def test_repeated_filler_words_do_not_change_the_paper_that_answers(ingested_settings, retriever):
    """Was a known failure with fp32 vectors ('Please' x20 ranked EXAONE 3.5's 'please reach out' first). BM25 now
    counts a repeated question word once (test_retrieval); this guards the whole answer."""
    assistant, _ = _scripted(ingested_settings, retriever, "")
    answer = assistant.ask(KMMLU_Q + " Please be precise." * 20)
    assert_citations_verbatim(answer, CORPUS)
    assert not answer.abstained and KMMLU_SOURCE in [(c.source, c.line) for c in answer.citations], answer.answer


def test_warm_up_embeds_the_corpus_sentences_once_and_keeps_them(tmp_path, embedder):
    from rag.sentences import split_sentences
    from rag.ingest import ingest
    from rag.retrieval import Retriever

    settings = Settings(data_dir=tmp_path / "data", corpus_paths=[Path(__file__).parent / "data" / "sample.jsonl"])
    ingest(settings, embedder=embedder)
    retriever = Retriever(settings, embedder=embedder)
    first = Assistant(settings, retriever=retriever, llm=ScriptedLLM("unused"))
    first.warm_up()
    assert settings.sentence_vectors_path.exists()
    sentences = {s for abstract in retriever.abstracts() for s in split_sentences(abstract)}
    assert sentences and sentences <= set(first.scorer._cache)

    again = Assistant(settings, retriever=retriever, llm=ScriptedLLM("unused"))
    assert again.scorer.prefetch(sorted(sentences)) == 0  # read back from disk, nothing embedded
