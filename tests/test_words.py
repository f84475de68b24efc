"""The word lists live in one checked data file (rag/words.toml); a broken file is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.words import WORDS_FILE, WordListError, load_words, words


def test_the_shipped_word_lists_load_and_feed_the_pipeline():
    w = words()
    assert "the" in w.stopwords and "benchmark" in w.type_words and "e.g" in w.abbreviations
    assert w.naming_phrases[-1] == "known as"  # arrays keep their phrases and order
    from rag.question import analyse

    assert analyse("Which papers study forgetting?").multi
    assert analyse("What accuracy does KMMLU report?").wants_figure


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda text: text.replace('multi_paper_nouns = "papers', 'multi_paper_nouns = "papers papers'), "repeats"),
        (lambda text: text.replace('multi_paper_nouns = "papers', 'multi_paper_nouns = "Papers'), "upper-case"),
        (lambda text: text + '\nsurprise = "x"\n', "unknown lists \\['surprise'\\]"),
        (lambda text: text.replace("figure_nouns =", "figure_nounz ="), "missing lists \\['figure_nouns'\\]"),
        (lambda text: text.replace('number_abbreviations = "no nos"', "number_abbreviations = 3"), "number_abbreviations must"),
        (lambda text: text + "\n[[[", "cannot read"),
    ],
)
def test_a_broken_word_file_is_one_clear_error(tmp_path: Path, change, message):
    broken = tmp_path / "words.toml"
    broken.write_text(change(WORDS_FILE.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(WordListError, match=message):
        load_words(broken)
