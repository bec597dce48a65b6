"""BM25's lexical analysis (index.runtime.lexical.Analyzer) and an index that records it: unit tests, no trained
artifacts. The bundle's side (manifest, refusals) is in tests/test_bundle.py."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from index.runtime.files import ArtifactError
from index.runtime.lexical import LOOKUP_COST, Analyzer, LexicalIndex, analysis_choices, tokenize

DOCS = [
    "Gin and tonic with lime",
    "A negroni: gin, vermouth and campari",
    "Mojito\nrum, mint, lime and soda",
    "",  # an item without text: never found by BM25
    "Old fashioned: bourbon, sugar, bitters",
    "Lime sorbet",
]
LIBRARY = [
    "The library of the university",
    "Libraries and their catalogues",
    "Cataloguing rules for a public library",
    "Gin and tonic",
]
# sha256 of each file `LexicalIndex.build(DOCS).save(...)` wrote before analyses existed (commit 1930b57): a `none`
# index must keep writing exactly these, so that the bundle's digest (its version) does not move.
BEFORE_ANALYSES = {
    "data.csc.index.npy": "bf94b19c83959d368eea191aac686bd6ecb0b3c6c298fca3bed61f573548ba68",
    "df.npy": "b90a69d25cc4c2fe35948b438516abd35996b5ca94116d2b74acfbc10bbfc302",
    "indices.csc.index.npy": "e31ee5052b9efd0f6d4f9d32e4e31e3265774071cceeeed159f71b6c94648908",
    "indptr.csc.index.npy": "1d3ef7ee115e241077fe871bbe9bb149c1803c7d256f0eac37b512aa7fb19879",
    "params.index.json": "b7026b5732ac83e65c4040d3bc941e020d1e8bd6e279ab34ea6a970511aa80c6",
    "stats.json": "b71aff1b43083d30d852f5b1d8f3cb04d3152813d7d1209a45c5bc01289ca0fd",
    "vocab.index.json": "c8184c71da21fb4274503abb8f55f9d3fb202f634274c330a341d37b96c4c8cb",
}


def _digests(directory: Path, names: list[str]) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in names}


def test_none_is_the_plain_tokenizer() -> None:
    text = "The Libraries of 2 Universities, gin-and-tonic naïve_x"
    assert Analyzer() == Analyzer("none") and not Analyzer().stems
    assert Analyzer().tokenize(text) == tokenize(text)
    assert tokenize(text) == ["the", "libraries", "of", "2", "universities", "gin", "and", "tonic", "naïve", "x"]


def test_a_language_drops_its_stop_words_then_stems() -> None:
    english = Analyzer("english")
    terms = english.tokenize("The libraries of the library are RUNNING, 2 cl!")
    assert terms == ["librari", "librari", "run", "2", "cl"]
    assert "stop words" in english.describe() and "Snowball english" in english.describe()
    # bm25s ships no Finnish stop words: every word is kept, and stemmed
    finnish = Analyzer("finnish")
    assert finnish.tokenize("kirjastot ja kirjasto") == ["kirjasto", "ja", "kirjasto"]
    assert "stop words" not in finnish.describe()


def test_an_unknown_analysis_is_refused_with_the_choices() -> None:
    assert analysis_choices()[0] == "none" and "english" in analysis_choices()
    with pytest.raises(ValueError, match=r"unknown lexical analysis 'klingon': choose none or a language.*english"):
        Analyzer("klingon")
    with pytest.raises(ValueError, match="unknown lexical analysis 'en'"):  # PyStemmer's aliases are not recorded
        Analyzer("en")


def test_threads_stem_alike() -> None:
    """A PyStemmer stemmer must not be called concurrently: each thread gets its own, and the same terms."""
    english = Analyzer("english")
    texts = [f"{doc} libraries running {i}" for i, doc in enumerate(DOCS * 50)]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(english.tokenize, texts)) == [english.tokenize(t) for t in texts]


def test_a_stemmed_index_finds_other_forms_of_a_word() -> None:
    plain = LexicalIndex.build(LIBRARY)
    stemmed = LexicalIndex.build(LIBRARY, analysis="english")
    assert stemmed.analyzer == Analyzer("english")
    assert set(stemmed.search("libraries", 10)[1].tolist()) == {0, 1, 2}
    assert plain.search("libraries", 10)[1].tolist() == [1]
    # a stop word is no term at all: it neither finds nor weighs
    assert stemmed.search("the of and", 10)[1].size == 0
    np.testing.assert_array_equal(stemmed.scores("the library"), stemmed.scores("library"))


def test_a_stemmed_index_scores_documents_outside_the_catalog_alike() -> None:
    """/rerank strings are analysed as the catalog was: the same score as the item with that text, and the request
    path's candidate scores (`scores_at`) are the whole catalog's."""
    index = LexicalIndex.build(LIBRARY + DOCS, analysis="english")
    for query in ("public libraries", "cataloguing the limes", "gin"):
        np.testing.assert_allclose(index.score_texts(query, LIBRARY + DOCS), index.scores(query), rtol=1e-5, atol=1e-6)
        rows = np.array([0, 2, 2, 5, 9])
        assert index.size < LOOKUP_COST
        np.testing.assert_array_equal(index.scores_at(query, rows), index.scores(query)[rows])


def test_a_stemmed_index_saves_and_loads_its_analysis(tmp_path: Path) -> None:
    index = LexicalIndex.build(LIBRARY, analysis=Analyzer("english"))
    index.save(tmp_path)
    assert json.loads((tmp_path / "stats.json").read_text())["analysis"] == "english"
    loaded = LexicalIndex.load(tmp_path)
    assert loaded.analyzer == Analyzer("english")
    np.testing.assert_array_equal(loaded.scores("libraries"), index.scores("libraries"))
    assert loaded.scores("libraries")[0] > 0


def test_a_none_index_writes_the_files_it_wrote_before_analyses(tmp_path: Path) -> None:
    names = LexicalIndex.build(DOCS, analysis="none").save(tmp_path / "none")
    assert _digests(tmp_path / "none", names) == BEFORE_ANALYSES
    assert "analysis" not in json.loads((tmp_path / "none" / "stats.json").read_text())
    assert LexicalIndex.load(tmp_path / "none").analyzer == Analyzer("none")  # no key: none


def test_an_index_of_an_unknown_analysis_is_refused(tmp_path: Path) -> None:
    LexicalIndex.build(DOCS).save(tmp_path)
    stats = json.loads((tmp_path / "stats.json").read_text())
    (tmp_path / "stats.json").write_text(json.dumps({**stats, "analysis": "klingon"}))
    with pytest.raises(ArtifactError, match="unknown lexical analysis 'klingon'"):
        LexicalIndex.load(tmp_path)
