"""Hybrid retrieval on the real index: paraphrased questions find the right paper, results are well-formed."""

from __future__ import annotations

import re

import pytest

from rag.corpus import load_corpus

# Questions that share few words with the abstract they are about -> (file, line) of that abstract.
PARAPHRASES = [
    ("robots that work out where they are from a written account of the scene", ("001_0b21518f7ee75860.txt", 17)),
    ("pruning most weights while adapting a model, for faster inference on CPUs", ("001_0b21518f7ee75860.txt", 13)),
    ("a test of expert knowledge across many subjects written in Korean", ("003_ce4bc02b0d96118d.txt", 4)),
    ("a probabilistic way to initialise soft prompts from several source tasks", ("000_984080258767f917.txt", 3)),
]


@pytest.mark.parametrize("question, where", PARAPHRASES)
def test_paraphrased_question_finds_its_paper(retriever, question, where):
    passages = retriever.search(question, k=3)
    assert where in [(p.source, p.line) for p in passages], [(p.label, p.source, p.line) for p in passages]


def test_passages_are_ranked_distinct_papers_with_locations(retriever):
    passages = retriever.search("instruction tuned language models", k=8)
    assert [p.rank for p in passages] == list(range(1, 9))
    assert len({p.paper_id for p in passages}) == 8
    assert all(a.score >= b.score for a, b in zip(passages, passages[1:]))
    for p in passages:
        assert p.text and p.source.endswith(".txt") and p.line >= 1
        assert p.chunk_text in p.text or p.chunk_text.split(". ")[0] in p.text
        assert -1.0 <= p.similarity <= 1.0


def test_duplicate_paper_keeps_both_locations(retriever):
    [p] = retriever.search("unified sequence to sequence pretraining on table data tasks", k=1)
    assert {(loc.source, loc.line) for loc in p.locations} == {
        ("001_0b21518f7ee75860.txt", 217),
        ("002_71fc0758a0d8cc00.txt", 459),
    }


def test_lexical_only_term_is_found(retriever):
    # An exact rare token (a dataset name) is what BM25 is for.
    [top, *_] = retriever.search("Street360Loc", k=3)
    assert (top.source, top.line) == ("001_0b21518f7ee75860.txt", 17)
    assert top.lexical_score > 0


def test_a_paper_holding_a_rare_name_of_the_question_ranks_first(retriever, ingested_settings, embedder):
    from rag.retrieval import Retriever

    question = "What accuracy does LangBridge reach on the MGSM multilingual math benchmark?"
    [top, *_] = retriever.search(question, k=5)
    assert (top.source, top.line) == ("003_ce4bc02b0d96118d.txt", 7)  # "We introduce LangBridge, ..."
    # Fusion alone buries it under papers near the question's other words (multilingual, math, accuracy).
    plain = Retriever(ingested_settings.model_copy(update={"retrieval": ingested_settings.retrieval.model_copy(
        update={"name_anchor_papers": 0})}), embedder=embedder)
    assert ("003_ce4bc02b0d96118d.txt", 7) not in [(p.source, p.line) for p in plain.search(question, k=5)]
    # A common name anchors nothing, and one given as an example ("tasks like NER") does not either.
    from rag.question import analyse

    def anchored(query: str) -> list[str]:
        return retriever._naming_chunks(analyse(query).required_names, *retriever._index())

    assert not anchored("Which models does GPT-4 beat?")
    assert anchored("What does LangBridge connect?")
    assert not anchored("Which bridging methods, like LangBridge, connect two models?")
    # Rare names held by different papers anchor none: no paper is about both.
    assert not anchored("What does LangBridge score on KMMLU?")


def test_a_name_ending_in_a_number_is_not_found_in_a_longer_version(retriever, corpus_dir):
    """"GPT-3" is not "GPT-3.5": the store's regex (Rust syntax, run by Chroma) finds the papers that name GPT-3
    itself, none of those that name only GPT-3.5."""
    papers = load_corpus([corpus_dir]).papers
    itself = {p.paper_id for p in papers if re.search(r"gpt-?3(?!\d|\.\d)", p.abstract, re.IGNORECASE)}
    longer_only = {p.paper_id for p in papers if re.search(r"gpt-?3\.5", p.abstract, re.IGNORECASE)} - itself
    assert itself and longer_only  # the bundled corpus has both
    assert set(retriever.papers_mentioning("GPT-3", max_papers=50)) == itself


def test_query_with_only_stopwords_still_answers(retriever):
    assert len(retriever.search("the of and", k=2)) == 2


def test_a_repeated_question_word_counts_once_in_bm25():
    from rag.lexical import LexicalIndex

    index = LexicalIndex.build(
        [("a:0", "Retrieval models rank passages for a question."), ("b:0", "Tokenizers split words into subword units.")],
        fingerprint="test",
    )
    once = index.search("retrieval tokenizers", 2)
    repeated = index.search("retrieval retrieval retrieval tokenizers", 2)
    assert repeated == once  # repeating "retrieval" does not make paper a outrank paper b
