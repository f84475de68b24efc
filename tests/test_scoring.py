"""Sentence relevance within one paper: the question's words that name the paper's subject do not tell its
sentences apart; the other words do."""

from __future__ import annotations

from rag.config import TuningSettings
from rag.question import analyse
from rag.scoring import relevance, telling_terms
from rag.text import terms

TITLE = "KoBench: A Korean Benchmark of Expert Exams"
SENTENCES = [
    "We propose KoBench, a Korean benchmark of expert exams across 45 subjects.",
    "Unlike earlier Korean benchmarks translated from English, KoBench is built from Korean exams.",
    "The best Korean model reaches 50% on the benchmark, far below human experts.",
    "We release the data and integrate it into an open-source evaluation framework, the LM Harness.",
]
QUESTION = analyse("Into which open-source evaluation framework was the Korean benchmark integrated?")


def test_terms_in_the_title_or_in_half_the_sentences_name_the_subject() -> None:
    telling = telling_terms(QUESTION.terms, [terms(s) for s in SENTENCES], TITLE)
    assert telling == terms("open-source evaluation framework integrated")
    # Without a title, a term in half the sentences or more still names the subject ("Korean", "benchmark").
    assert telling_terms(QUESTION.terms, [terms(s) for s in SENTENCES], None) == telling


def test_the_sentence_with_the_telling_words_outranks_one_that_only_shares_the_subject() -> None:
    cosines = [0.70, 0.66, 0.55, 0.42]  # the embedder favours the sentences about the subject
    tuning = TuningSettings()
    scores = relevance(QUESTION, SENTENCES, cosines, tuning, TITLE)
    assert max(range(len(SENTENCES)), key=lambda i: scores[i]) == 3
    # With no weight on telling terms, the subject's sentence wins: the weight is what ranks the answer first.
    plain = relevance(QUESTION, SENTENCES, cosines, tuning.model_copy(update={"telling_weight": 0.0}), TITLE)
    assert max(range(len(SENTENCES)), key=lambda i: plain[i]) == 0
