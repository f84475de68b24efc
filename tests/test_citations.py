"""Post-hoc citation checking with the real embedder: markers kept, moved, renumbered or removed; claims checked."""

from __future__ import annotations

import pytest

from rag.citations import check_answer, cite_quotes
from rag.context import Context, PaperContext
from rag.scoring import SentenceScorer, score_sentences
from rag.text import marker_numbers, strip_markers
from rag.extractive import extractive_quotes, new_facts, quotes_text
from rag.sentences import split_sentences
from rag.prompts import NOT_IN_CORPUS

KMMLU = (
    "We propose KMMLU, a new Korean benchmark with 35,030 expert-level multiple-choice questions across 45 subjects. "
    "KMMLU is collected from original Korean exams, capturing linguistic and cultural aspects of the Korean language. "
    "We test 27 public and proprietary LLMs and observe the best public model to score 50.5%."
)
HCX = (
    "We introduce HyperCLOVA X, a family of large language models tailored to the Korean language and culture. "
    "HyperCLOVA X was trained on a balanced mix of Korean, English, and code data, followed by instruction-tuning. "
    "The model is evaluated on reasoning, knowledge, commonsense, factuality, coding, math, chatting and safety."
)
QUESTION = "How many questions does the KMMLU benchmark have, and what data was HyperCLOVA X trained on?"


@pytest.fixture(scope="module")
def scorer(embedder) -> SentenceScorer:
    return SentenceScorer(embedder)


@pytest.fixture(scope="module")
def context(scorer) -> Context:
    papers = []
    for n, (paper_id, title, text) in enumerate([("kmmlu", "KMMLU", KMMLU), ("hcx", None, HCX)], start=1):
        sentences = split_sentences(text)
        papers.append(PaperContext(
            n=n, paper_id=paper_id, title=title, label=title or "HyperCLOVA X", source=f"{paper_id}.txt", line=n * 10,
            similarity=0.6, sentences=sentences, scores=score_sentences(QUESTION, sentences, scorer),
            chosen=list(range(len(sentences))),
        ))
    return Context(question=QUESTION, papers=papers, messages=[], prompt_tokens=0, max_tokens=64)


def test_marker_parsing():
    assert marker_numbers("1") == [1]
    assert marker_numbers("1, 2") == [1, 2]
    assert marker_numbers("1-3") == [1, 2, 3]
    assert marker_numbers("2 and 1") == [2, 1]
    assert strip_markers("A claim [1][2]. Another [Passage 3].") == "A claim. Another."


def test_supported_claim_keeps_its_citation_with_file_line_and_quote(context, scorer):
    checked = check_answer("KMMLU has 35,030 expert-level multiple-choice questions [1].", context, scorer)
    assert checked.text == "KMMLU has 35,030 expert-level multiple-choice questions [1]."
    (citation,) = checked.citations
    assert (citation.n, citation.paper_id, citation.source, citation.line) == (1, "kmmlu", "kmmlu.txt", 10)
    assert "35,030" in citation.quote and 0 <= citation.score <= 1
    assert not checked.unsupported


def test_invented_marker_is_removed_and_the_right_one_attached(context, scorer):
    checked = check_answer("KMMLU has 35,030 expert-level multiple-choice questions [7].", context, scorer)
    assert "[7]" not in checked.text
    assert [c.paper_id for c in checked.citations] == ["kmmlu"]
    assert checked.text.endswith("[1].")


def test_wrong_marker_moves_to_the_supporting_passage_and_is_renumbered(context, scorer):
    checked = check_answer("HyperCLOVA X was trained on a mix of Korean, English, and code data [1].", context, scorer)
    assert [c.paper_id for c in checked.citations] == ["hcx"]
    assert checked.citations[0].n == 1 and checked.text.endswith("[1].")
    assert "code data" in checked.citations[0].quote


def test_citations_are_renumbered_in_order_of_first_use(context, scorer):
    raw = (
        "HyperCLOVA X was trained on Korean, English, and code data [2]. "
        "KMMLU has 35,030 expert-level questions [1]."
    )
    checked = check_answer(raw, context, scorer)
    assert [(c.n, c.paper_id) for c in checked.citations] == [(1, "hcx"), (2, "kmmlu")]
    assert checked.text == (
        "HyperCLOVA X was trained on Korean, English, and code data [1]. KMMLU has 35,030 expert-level questions [2]."
    )


def test_one_sentence_citing_two_papers_keeps_both(context, scorer):
    raw = "KMMLU has 35,030 expert-level questions [1], and HyperCLOVA X was trained on Korean, English, and code data [2]."
    checked = check_answer(raw, context, scorer)
    assert [c.paper_id for c in checked.citations] == ["kmmlu", "hcx"]


def test_unsupported_and_invented_claims_are_not_shown_as_cited(context, scorer):
    raw = (
        "KMMLU has 35,030 expert-level questions [1]. "
        "The moon is made of green cheese and orbits Jupiter [1]. "
        "KMMLU has 99,999 questions [1]. "
        "HyperCLOVA X was built by GPT-9 Labs [2]."
    )
    checked = check_answer(raw, context, scorer)
    assert checked.text == "KMMLU has 35,030 expert-level questions [1]."
    assert len(checked.unsupported) == 3
    assert all("[" not in s for s in checked.unsupported)
    assert [c.paper_id for c in checked.citations] == ["kmmlu"]


def test_model_abstention_is_detected_and_not_cited(context, scorer):
    checked = check_answer(NOT_IN_CORPUS, context, scorer)
    assert checked.model_abstained and not checked.text and not checked.citations


def test_passage_tags_echoed_by_the_model_are_dropped(context, scorer):
    checked = check_answer("<passage id=1> KMMLU has 35,030 expert-level questions [1]. </passage>", context, scorer)
    assert "<passage" not in checked.text and checked.citations


def test_new_facts_tells_an_answer_from_a_restatement():
    question = "How many questions does the KMMLU benchmark have?"
    assert new_facts("KMMLU has 35,030 questions [1].", question) == {"35030"}
    assert new_facts("The KMMLU benchmark has questions [1].", question) == set()
    assert "LangBridge" in new_facts("The approach is LangBridge [1].", "What zero-shot approach bridges models?")


def test_the_extractive_answer_quotes_the_best_sentence_cited_as_the_check_would(context, scorer):
    single = Context(question="How many questions does KMMLU have?", papers=context.papers[:1], messages=[],
                     prompt_tokens=0, max_tokens=64)
    quotes = extractive_quotes(single, multi=False)
    text = quotes_text(quotes)
    assert "35,030" in text and text.endswith("[1].")
    checked = cite_quotes(quotes, single, scorer)
    assert checked.text and checked.text == check_answer(text, single, scorer).text  # cited as the check would cite it
    assert [c.paper_id for c in checked.citations] == ["kmmlu"] and checked.citations[0].quote in text


def test_fallback_for_a_multi_paper_question_cites_each_paper(context, scorer):
    checked = cite_quotes(extractive_quotes(context, multi=True), context, scorer)
    assert {c.paper_id for c in checked.citations} == {"kmmlu", "hcx"}


def test_quotes_after_a_checked_answer_continue_its_numbering_and_skip_its_claims(context, scorer):
    model = check_answer("HyperCLOVA X was trained on a mix of Korean, English, and code data [2].", context, scorer)
    assert [c.paper_id for c in model.citations] == ["hcx"]
    quotes = extractive_quotes(context, multi=True)
    both = cite_quotes(quotes, context, scorer, after=model)
    assert both.text.startswith(model.text)
    assert [(c.n, c.paper_id) for c in both.citations] == [(1, "hcx"), (2, "kmmlu")]
    assert "[2]" in both.text[len(model.text):]
    again = cite_quotes(quotes, context, scorer, after=both)
    assert again.text == both.text  # a claim already made is not made twice


def _one_paper(question: str, title: str | None, text: str, scorer) -> Context:
    sentences = split_sentences(text)
    paper = PaperContext(
        n=1, paper_id="p", title=title, label=title or sentences[0][:40], source="p.txt", line=3, similarity=0.6,
        sentences=sentences, scores=score_sentences(question, sentences, scorer), chosen=list(range(len(sentences))),
    )
    return Context(question=question, papers=[paper], messages=[], prompt_tokens=0, max_tokens=64)


REWARD = (
    "Reward models trained on multi-task data suffer from task disturbance and noisy preference labels. "
    "To tackle these two challenges, we introduced the idea of Mixture-of-Experts into reward modelling. "
    "We propose the Double-Layer MoE RM (DMoERM). "
    "The outer layer routes each input to a task expert and the inner layer splits the task into capabilities."
)


def test_a_question_after_a_method_gets_the_sentence_that_names_it(scorer):
    question = "What double-layer mixture-of-experts reward model copes with task disturbance and noisy labels?"
    text = quotes_text(extractive_quotes(_one_paper(question, None, REWARD, scorer), multi=False))
    assert "(DMoERM)" in text  # the sentence coining the name, not only the one that "introduced the idea"
    titled_paper = _one_paper(question, "DMoERM: Recipes of Mixture-of-Experts", REWARD, scorer)
    titled = quotes_text(extractive_quotes(titled_paper, multi=False))
    assert titled.startswith("DMoERM: Recipes of Mixture-of-Experts [1]: ")  # a work is asked for: its title leads


def test_a_question_after_a_figure_gets_a_close_sentence_that_gives_one(scorer):
    abstract = (
        "We study the circuit discovered in Wang et al. (2022) for the IOI task and 1.) show that it reproduces on a "
        "larger GPT2 model, and 2.) that it is reused for the Colored Objects task. "
        "Both circuits share about a 78% overlap in in-circuit attention heads. "
        "We further present an intervention experiment."
    )
    question = "How large is the overlap between the IOI and Colored Objects circuits in GPT2?"
    text = quotes_text(extractive_quotes(_one_paper(question, None, abstract, scorer), multi=False, sentences=1))
    assert "78%" in text  # years and list labels such as "2022" or "1.)" are not figures


def test_what_counts_as_asking_for_a_work():
    from rag.question import analyse

    def asks_for_a_work(question: str) -> bool:
        return analyse(question).wants_work

    def asks_for_a_figure(question: str) -> bool:
        return analyse(question).wants_figure

    assert asks_for_a_work("Which papers initialize a target-task prompt from several source prompts?")
    assert asks_for_a_work("Is there work on standardizing job titles from the skills listed in an ad?")
    assert asks_for_a_work("What graph-structured dataset was introduced for image generation?")
    assert asks_for_a_work("Instead of in-prompt examples, can a task vector be mixed into attention heads?")
    assert asks_for_a_work("Can chat assistants be aligned without human preference labels?")
    assert asks_for_a_figure("In that evaluation, what range of model sizes was tested?")
    assert asks_for_a_figure("PTR progressive thought refinement: average accuracy after refinement?")
    assert asks_for_a_figure("CALM bias benchmark: number of examples?")
    assert asks_for_a_work("In the Mental-LLM work, what are the best instruction-finetuned models called?")
    assert asks_for_a_work("Name the framework that curbs object hallucinations through early intervention.")
    assert asks_for_a_work("I recall a paper that found a cheaper Transformer variant by search. What is it called?")
    assert not asks_for_a_work("How many questions does KMMLU contain?")
    assert not asks_for_a_work("Why do reward models prefer long answers?")


def test_a_list_label_is_no_figure_and_a_verbatim_quote_supports_itself(scorer):
    abstract = (
        "We study the circuit for the IOI task and 1.) show that it reproduces on a larger GPT2 model, and 2.) that it "
        "is reused for the Colored Objects task. "
        "Both circuits share about a 78% overlap in in-circuit attention heads. "
        "We further present an intervention experiment."
    )
    question = "How large is the overlap between the IOI and Colored Objects circuits in GPT2?"
    context = _one_paper(question, None, abstract, scorer)
    invented = check_answer("The overlap between the IOI and Colored Objects circuits is 1 [1].", context, scorer)
    assert not invented.citations and invented.unsupported  # "1.)" labels a list item: it is not a figure
    quoted = check_answer("Both circuits share about a 78% overlap in in-circuit attention heads [1].", context, scorer)
    assert [c.quote for c in quoted.citations] == ["Both circuits share about a 78% overlap in in-circuit attention heads."]


def test_a_question_after_a_dataset_gets_the_sentence_that_introduces_the_dataset(scorer):
    from rag.question import asked_kind

    abstract = (
        "Universal image generation remains hard because tasks are sparse and weakly related. "
        "To tackle these challenges, we propose VisualCloze, a universal image generation framework. "
        "To this end, we introduce Graph200K, a graph-structured dataset that establishes interrelated tasks. "
        "Experiments show strong generalisation."
    )
    question = "What graph-structured dataset was introduced to support universal image generation?"
    assert asked_kind(question) == "dataset" and asked_kind("Which papers study forgetting?") is None
    paper = _one_paper(question, "VisualCloze: A Universal Image Generation Framework", abstract, scorer)
    text = quotes_text(extractive_quotes(paper, multi=False))
    assert "Graph200K" in text  # not only the sentence naming the framework


def test_a_name_introduced_in_quotes_is_preferred_to_one_only_shared_with_the_title(scorer):
    abstract = (
        "Customer service is evolving with large language models. "
        "This research paper introduces an approach to automating customer service using LangChain. "
        "The paper explores the obsolescence of FAQ pages. "
        'This open-source framework, presented as "Sahaay," scales across organizations. '
        "Results are shown for an educational institution."
    )
    question = "Is there an open-source chatbot that replaces a college's FAQ page with answers from its website?"
    title = "Automating Customer Service using LangChain: Building a custom open-source GPT Chatbot"
    quotes = extractive_quotes(_one_paper(question, title, abstract, scorer), multi=False, sentences=1)
    assert "Sahaay" in quotes_text(quotes)


def test_the_sentence_holding_a_specific_number_of_the_question_is_quoted(scorer):
    abstract = (  # from the corpus (002 line 95): the 119-tasks sentence ranks only 5th by relevance
        "Instruction tuning of language models has demonstrated the ability to enhance model generalization to unseen "
        "tasks via in-context learning using a few examples. However, typical supervised learning still requires a "
        "plethora of downstream training data for finetuning. In this work, we demonstrate the sample efficiency of "
        "instruction tuned models over various tasks by estimating the minimal downstream training data required by "
        "them to perform transfer learning and match the performance of state-of-the-art (SOTA) supervised models. "
        "We conduct experiments on 119 tasks from Super Natural Instructions (SuperNI) in both the single task "
        "learning (STL) and multi task learning (MTL) settings. Our findings reveal that, in the STL setting, "
        "instruction tuned models equipped with 25% of the downstream train data surpass the SOTA performance."
    )
    question = ("Which instruction benchmark supplied the 119 tasks used to show that instruction-tuned models need "
                "only a fraction of downstream training data?")
    paper = _one_paper(question, "Instruction Tuned Models are Quick Learners", abstract, scorer)
    text = quotes_text(extractive_quotes(paper, multi=False, sentences=1))
    assert "Super Natural Instructions" in text


def test_a_paper_cited_only_for_a_restatement_of_the_question_is_not_answered():
    from rag.extractive import adds_to, papers_answered
    from rag.types import Citation

    question = "Which papers transfer math reasoning from a large model into a smaller one?"
    citations = [
        Citation(n=1, source="a.txt", line=1, paper_id="a", title=None, quote="q", score=0.9),
        Citation(n=2, source="b.txt", line=2, paper_id="b", title=None, quote="q", score=0.9),
    ]
    text = ("The papers that transfer math reasoning from a large model into a smaller one are: 1 [1]. "
            "We propose program distillation with Codex [2].")
    assert not adds_to("The papers that transfer math reasoning into a smaller one are: 1 [1].", question)
    assert papers_answered(text, citations, question) == {"b"}


# -- the verbatim check the end-to-end tests use (tests/checks.py)


def test_verbatim_check_finds_quotes_at_their_line_and_nowhere_else(tmp_path):
    from checks import assert_citations_verbatim

    (tmp_path / "a.txt").write_text("Title line\n\nAbstract:We propose KMMLU, a new   Korean benchmark.\nOther text.\n")

    def answer(quote: str, line: int = 3, source: str = "a.txt") -> dict:
        return {"citations": [{"n": 1, "source": source, "line": line, "quote": quote}]}

    assert_citations_verbatim(answer("We propose KMMLU, a new Korean\nbenchmark."), tmp_path)  # whitespace normalised
    assert_citations_verbatim(answer("We propose KMMLU, a new Kor…"), tmp_path)  # cut short: its prefix
    assert_citations_verbatim({"citations": []}, tmp_path)
    (tmp_path / "b.txt").write_text("Abstract:We reach 96.4\\% with 360{\\deg} views.\n")
    assert_citations_verbatim(answer("We reach 96.4% with 360° views.", line=1, source="b.txt"), tmp_path)  # as parsed
    for wrong in (answer("Other text."), answer("We propose KMMLU.", line=4), answer("we propose kmmlu"),
                  answer("We propose KMMLU", line=9), answer("We propose KMMLU", source="b.txt"), answer("…")):
        with pytest.raises(AssertionError):
            assert_citations_verbatim(wrong, tmp_path)


def test_the_sentence_that_names_a_paper_s_contribution_is_found_with_or_without_a_title():
    from rag.extractive import naming_sentence

    sentences = [
        "Current question-answering datasets are inadequate for question generation in education.",
        "Therefore, we curate a new QG dataset called EduProbe for school-level subjects.",
        "We fine-tune T5 and BART on it.",
    ]
    assert naming_sentence(sentences, title=None) == 1  # "called EduProbe" names it, though no title says so
    assert naming_sentence(["We propose a method called prompt tuning."], title=None) is None  # no name is coined
    assert naming_sentence(["We propose prompting with self-regulating constraints (PromptSRC)."], title=None) == 0
