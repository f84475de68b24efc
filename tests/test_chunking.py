from rag.chunking import chunk_paper, chunk_papers, chunking_signature
from rag.sentences import split_sentences
from rag.config import ChunkingSettings, Settings
from rag.corpus import load_corpus, paper_id_for
from rag.types import Location, Paper


def _paper(abstract: str, title: str | None = "A Title") -> Paper:
    return Paper(paper_id=paper_id_for(abstract), title=title, abstract=abstract, locations=[Location(source="f.txt", line=3)])


def test_split_sentences_keeps_abbreviations_and_decimals():
    text = "We use e.g. BERT and GPT-2. Accuracy rises by 3.5 points, i.e. a lot. Results in Sec. 4 hold! Do they?"
    assert split_sentences(text) == [
        "We use e.g. BERT and GPT-2.",
        "Accuracy rises by 3.5 points, i.e. a lot.",
        "Results in Sec. 4 hold!",
        "Do they?",
    ]


def test_short_abstract_is_one_chunk_with_title_prepended():
    paper = _paper("Short abstract. Two sentences.")
    [chunk] = chunk_paper(paper, ChunkingSettings())
    assert chunk.chunk_id == f"{paper.paper_id}:0"
    assert chunk.text == paper.abstract
    assert chunk.embed_text == "A Title. Short abstract. Two sentences."
    assert (chunk.source, chunk.line) == ("f.txt", 3)


def test_untitled_abstract_embeds_text_only():
    [chunk] = chunk_paper(_paper("Only text here.", title=None), ChunkingSettings())
    assert chunk.embed_text == "Only text here."


def test_long_abstract_splits_on_sentences_with_overlap():
    sentences = [f"Sentence number {i} says something about models." for i in range(30)]
    paper = _paper(" ".join(sentences))
    chunks = chunk_paper(paper, ChunkingSettings(max_words=40, overlap_sentences=1))
    assert len(chunks) > 1
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert len(c.text.split()) <= 40
        assert c.text.endswith(".")
    for a, b in zip(chunks, chunks[1:]):
        last = split_sentences(a.text)[-1]
        assert b.text.startswith(last)  # one sentence of overlap
    covered = set(s for c in chunks for s in split_sentences(c.text))
    assert covered == set(sentences)


def test_chunking_is_deterministic_on_the_corpus(corpus_dir):
    papers = load_corpus([corpus_dir]).papers
    first = chunk_papers(papers, Settings().chunking)
    second = chunk_papers(load_corpus([corpus_dir]).papers, Settings().chunking)
    assert [c.model_dump() for c in first] == [c.model_dump() for c in second]
    assert len({c.chunk_id for c in first}) == len(first)
    assert {c.paper_id for c in first} == {p.paper_id for p in papers}


def test_signature_changes_with_settings():
    assert chunking_signature(ChunkingSettings(max_words=100)) != chunking_signature(ChunkingSettings(max_words=120))
