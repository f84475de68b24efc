"""One analysis per question: what later stages read from it (no model, no index)."""

from __future__ import annotations

import re

import pytest

from rag.question import analyse, capitalised_head
from rag.text import name_in, name_pattern
from rag.types import ChatTurn


@pytest.mark.parametrize(
    ("question", "wants_list"),
    [
        ("Which papers report results on SuperGLUE?", True),
        ("Which abstracts mention Korean?", True),
        ("Are there recent studies on catastrophic forgetting?", True),
        ("How many papers does the survey review?", False),  # a figure, not a list
        ("What programming model abstracts pipelines as graphs?", False),  # "abstracts" as a verb
        ("What approach folds instruction tuning into pre-training so that it works?", False),
    ],
)
def test_list_questions_are_told_apart(question: str, wants_list: bool):
    assert analyse(question).wants_list is wants_list


def test_the_analysis_holds_what_later_stages_need():
    q = analyse("How many expert-level questions does KMMLU (Korean MMLU) contain, and what accuracy does GPT-4 reach?")
    assert q.wh == "how many" and q.wants_figure and not q.wants_list
    assert q.names == ("KMMLU", "MMLU", "GPT-4") and analyse("Does KMMLU hold 35,030 questions?").numbers == {"35030"}
    assert q.counted[:2] == ("expert-level", "questions")
    followup = analyse("and which dataset did they use?", [ChatTurn(role="user", content="What is KMMLU?")])
    assert followup.followup and "KMMLU" in followup.text and followup.asked == "and which dataset did they use?"


def test_a_list_question_requires_its_names_but_not_its_examples():
    from rag.question import list_names

    def names(question: str) -> list[tuple[str, ...]]:
        return list_names(analyse(question))

    assert names("Which papers evaluate on the Massive Text Embedding Benchmark?") == [("Massive Text Embedding Benchmark",)]
    assert names("Which papers build on a mixture-of-experts (MoE) architecture?") == [("MoE", "mixture-of-experts")]
    assert names("Which papers adapt vision-language models such as CLIP to new tasks?") == []
    assert names("Which papers in my collection deal with the Korean language?") == [("Korean",)]
    # Names offered as alternatives make one requirement: a paper mentioning either qualifies.
    assert names("Which papers use the Natural Instructions or Super-NaturalInstructions collections?") == [
        ("Natural Instructions", "Super-NaturalInstructions"),
    ]
    assert names("Which papers compare GPT-4 and LLaMA-2?") == [("GPT-4",), ("LLaMA-2",)]
    # An owner's possessive qualifies the name after it; a paper on PaLM need not say "Google".
    assert names("Which papers run experiments with Google's PaLM model?") == [("PaLM",)]
    assert names("Which papers build on Meta’s OPT language models?") == [("OPT",)]
    assert names("Which papers evaluate Meta's models?") == [("Meta",)]  # nothing after it: the owner is the name
    assert names("Which papers adapt Google's multilingual mT5 model?") == [("mT5",)]  # across a modifier
    assert names("Which papers evaluate Meta's models and GPT-4?") == [("Meta",), ("GPT-4",)]  # not across "and"
    # A name after a contrast is not required of every listed paper: "instead of", "not only", "but not".
    assert names("Which papers train an open judge instead of relying on GPT-4?") == []
    assert names("Which abstracts name the original GPT-3 (not only GPT-3.5 or GPT-4)?") == [("GPT-3",)]
    assert names("Which papers fine-tune with LoRA but not with QLoRA?") == [("LoRA",)]


def test_capitalised_head_drops_a_lower_case_tail():
    assert [capitalised_head(w) for w in ("Korean-language", "BIG-Bench", "Mistral-7B", "T5-based")] == [
        "Korean", "BIG-Bench", "Mistral-7B", "T5",
    ]


def test_the_subject_is_the_first_name_after_does():
    assert analyse("What accuracy does Flan-T5 reach when trained on TarGEN's data?").subject == "Flan-T5"
    assert analyse("What accuracy does the Korean-tailored Polyglot-Ko model achieve on KMMLU?").subject == "Polyglot-Ko"
    assert analyse("Which datasets did the NV-Embed authors use?").subject == "NV-Embed"
    assert analyse("What is the accuracy of GPT-4 on KMMLU?").subject is None  # no does/do/did


def test_a_name_ending_in_a_number_is_not_a_longer_version_of_it():
    assert name_in("GPT-3", "we compare gpt-3 (175b) with palm")
    assert name_in("GPT-3", "as in gpt-3. then")
    assert not name_in("GPT-3", "we compare gpt-3.5 and gpt-4")
    assert not name_in("Qwen2", "qwen2.5 models")
    pattern = re.compile(name_pattern("GPT-3"))
    assert pattern.search("GPT-3 (175B)") and pattern.search("like GPT3") and pattern.search("ends with GPT-3")
    assert pattern.search("as in GPT-3. Then") and pattern.search("GPT-3-based models")
    assert not pattern.search("GPT-3.5 and GPT-4") and not pattern.search("GPT-35")
