"""Lexical retrieval: Okapi BM25 over each item's text fields (title and text joined), with bm25s.

bm25s stores the BM25 weight of every (term, item) pair as a sparse matrix, so a query's scores over the whole
catalog are a sum of a few sparse rows: no Python loop over items (`loadtests/bench/lexical.py` measured it against
tantivy; BENCHMARKS.md). The index lives in the bundle's `lexical/` directory, every file checksummed in the manifest.

Documents that are not in the catalog (a `/rerank` plain string) are scored with the catalog's statistics (document
frequencies and mean length), so their scores are on the same scale as a catalog item's.

How text becomes terms (the `Analyzer`: `none`, or a Snowball language with its stop words) is a setting of the
index, saved with it and used for its queries and for documents outside the catalog alike: a query analysed one way
finds nothing in an index analysed another.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import Stemmer

from index.runtime.files import ArtifactError

log = logging.getLogger(__name__)

TOKEN = re.compile(r"[^\W_]+")  # runs of letters and digits (any script), after lowercasing
STATS_FILE = "stats.json"
DF_FILE = "df.npy"
# One term's binary searches at a query's candidate rows (`scores_at`) cost about as much as summing this many
# postings and catalog rows into a whole-catalog score vector: 12-19 us against 1.2-2 ns an element, measured on the
# 5k and 100k SYNTHETIC bundles. Below it, scoring the whole catalog is the cheaper way to the same numbers.
LOOKUP_COST = 10_000
NO_ANALYSIS = "none"
# Stems each thread's stemmer remembers (PyStemmer's own cache): a query's words are stemmed on the request path,
# and repeat. More than any SYNTHETIC or CISI vocabulary, a few MB at most.
STEM_CACHE = 100_000
# bm25s's stop-word lists (from NLTK) by PyStemmer algorithm; a language without one is only stemmed. porter and
# dutch_porter are older stemmers of English and Dutch, so they take those languages' lists.
_STOP_WORDS = {
    "danish": "STOPWORDS_DANISH",
    "dutch": "STOPWORDS_DUTCH",
    "dutch_porter": "STOPWORDS_DUTCH",
    "english": "STOPWORDS_EN",
    "porter": "STOPWORDS_EN",
    "french": "STOPWORDS_FRENCH",
    "german": "STOPWORDS_GERMAN",
    "italian": "STOPWORDS_ITALIAN",
    "norwegian": "STOPWORDS_NORWEGIAN",
    "portuguese": "STOPWORDS_PORTUGUESE",
    "russian": "STOPWORDS_RUSSIAN",
    "spanish": "STOPWORDS_SPANISH",
    "swedish": "STOPWORDS_SWEDISH",
    "turkish": "STOPWORDS_TURKISH",
}


def tokenize(text: str) -> list[str]:
    """Lowercase runs of letters and digits: the terms of the `none` analysis, and the first step of every other."""
    return TOKEN.findall(text.lower())


@cache
def analysis_choices() -> tuple[str, ...]:
    """Every valid analysis: `none`, then PyStemmer's Snowball algorithms."""
    return (NO_ANALYSIS, *sorted(Stemmer.algorithms()))


def stop_words(language: str) -> frozenset[str]:
    """bm25s's stop words for a PyStemmer language (lowercase, unstemmed); empty where it ships none."""
    if language not in _STOP_WORDS:
        return frozenset()
    import bm25s.stopwords

    return frozenset(getattr(bm25s.stopwords, _STOP_WORDS[language]))


@dataclass(frozen=True)
class Analyzer:
    """How text becomes BM25 terms: `none` lowercases and splits (no language assumed; BM25's idf already discounts
    frequent words), a PyStemmer language then drops that language's stop words and keeps each word's Snowball stem,
    so that "libraries" finds "library" (on CISI, all 76 queries, English took BM25 from 0.351 to 0.385 nDCG@10).

    Equal by name; the stemmers are per thread, since a PyStemmer stemmer must not be called concurrently."""

    name: str = NO_ANALYSIS
    _stop: frozenset[str] = field(init=False, repr=False, compare=False)
    _local: threading.local = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in analysis_choices():
            raise ValueError(
                f"unknown lexical analysis {self.name!r}: choose none or a language, one of "
                + ", ".join(analysis_choices()[1:])
            )
        object.__setattr__(self, "_stop", stop_words(self.name))
        object.__setattr__(self, "_local", threading.local())

    def __reduce__(self) -> tuple[type[Analyzer], tuple[str]]:
        return Analyzer, (self.name,)  # copies and pickles rebuild the stemmers, which cannot be copied

    @classmethod
    def of(cls, value: Analyzer | str) -> Analyzer:
        return value if isinstance(value, Analyzer) else cls(value)

    @property
    def stems(self) -> bool:
        return self.name != NO_ANALYSIS

    def describe(self) -> str:
        """One line for a manifest: what the terms are."""
        words = "lowercase runs of letters and digits"
        if not self.stems:
            return words
        stop = f", {self.name} stop words removed (bm25s)" if self._stop else ""
        return f"{words}{stop}, Snowball {self.name} stems (PyStemmer)"

    def tokenize(self, text: str) -> list[str]:
        """The text's terms in order, repeats kept."""
        tokens = tokenize(text)
        if not self.stems:
            return tokens
        if self._stop:
            tokens = [t for t in tokens if t not in self._stop]
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer(self.name, STEM_CACHE)
        return stemmer.stemWords(tokens)


@dataclass(frozen=True)
class LexicalParams:
    """BM25's parameters (the usual k1 and b; bm25s's 'lucene' idf: log(1 + (N - n + 0.5) / (n + 0.5)))."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"


class LexicalIndex:
    """BM25 over a catalog's texts; row i is item i."""

    def __init__(
        self,
        bm25: object,
        df: np.ndarray,
        avg_length: float,
        params: LexicalParams,
        analyzer: Analyzer | None = None,
    ) -> None:
        self._bm25 = bm25
        self._vocab: dict[str, int] = bm25.vocab_dict  # type: ignore[attr-defined]
        self._df = df
        self.size = int(bm25.scores["num_docs"])  # type: ignore[attr-defined]
        # The (term -> items) weight matrix in CSC form, as bm25s stores it: term t's postings are
        # indices/weights[indptr[t]:indptr[t + 1]].
        csc = bm25.scores  # type: ignore[attr-defined]
        self._indptr, self._indices, self._weights = csc["indptr"], csc["indices"], csc["data"]
        # `scores_at` binary-searches a term's postings, which needs each term's item rows ascending. bm25s writes
        # them so (scipy's canonical CSC); an index that is not falls back to scoring the whole catalog.
        steps = np.diff(self._indices.astype(np.int64))
        column_starts = np.zeros(len(steps), dtype=bool)
        column_starts[self._indptr[1:-1][(self._indptr[1:-1] > 0) & (self._indptr[1:-1] <= len(steps))] - 1] = True
        self._rows_sorted = bool(np.all((steps > 0) | column_starts))
        self.avg_length = avg_length
        self.params = params
        self.analyzer = analyzer or Analyzer()

    @property
    def vocabulary_size(self) -> int:
        """Distinct terms in the index (bm25s's empty token included)."""
        return len(self._vocab)

    @property
    def bm25(self) -> object:
        """The bm25s model scored from (what `save` writes): its `scores` dict holds the term-by-item weights in
        CSC form (`indptr`, `indices`, `data`)."""
        return self._bm25

    @property
    def document_frequencies(self) -> np.ndarray:
        """(V,) int32: in how many items each term occurs, by term id (the idf of `score_texts`)."""
        return self._df

    def term_id(self, term: str) -> int | None:
        """The id (CSC column) of an analysed term, or None when no item has it."""
        return self._vocab.get(term)

    @property
    def postings_sorted(self) -> bool:
        """Each term's postings are in ascending item row, so `scores_at` may binary-search them (bm25s writes them
        so); when not, it scores the whole catalog instead."""
        return self._rows_sorted

    @classmethod
    def build(
        cls, texts: Sequence[str], params: LexicalParams | None = None, analysis: Analyzer | str = NO_ANALYSIS
    ) -> LexicalIndex:
        """BM25 over `texts` (row i is texts[i]), their terms made by `analysis`."""
        import bm25s

        params = params or LexicalParams()
        analyzer = Analyzer.of(analysis)
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        tokens = [analyzer.tokenize(text) for text in texts]
        # The vocabulary is made here, sorted, so that the same catalog writes the same files in any process
        # (bm25s's own comes from a set, whose order changes with Python's hash seed); "" is bm25s's empty token,
        # which lets it index a catalog where no item has text.
        vocab = {token: i for i, token in enumerate(sorted({t for doc in tokens for t in doc} | {""}))}
        ids = [[vocab[t] for t in doc] for doc in tokens]
        bm25 = bm25s.BM25(k1=params.k1, b=params.b, method=params.method)
        with np.errstate(invalid="ignore", divide="ignore"):  # a catalog without text has mean length 0
            bm25.index((ids, vocab), show_progress=False)
        df = np.zeros(len(vocab), dtype=np.int32)
        for doc in ids:
            df[list(set(doc))] += 1
        avg_length = float(np.mean([len(doc) for doc in tokens])) if tokens else 0.0
        return cls(bm25, df, avg_length, params, analyzer)

    def save(self, directory: Path) -> list[str]:
        """Write the index into `directory`; returns the file names (for the manifest's checksums)."""
        directory.mkdir(parents=True, exist_ok=True)
        self._bm25.save(str(directory), show_progress=False)  # type: ignore[attr-defined]
        np.save(directory / DF_FILE, self._df)
        stats = {"items": self.size, "avg_length": self.avg_length, **asdict(self.params)}
        if self.analyzer.stems:  # absent for `none`: such an index writes the same files as before analyses existed
            stats["analysis"] = self.analyzer.name
        (directory / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        return sorted(p.name for p in directory.iterdir() if p.is_file())

    @classmethod
    def load(cls, directory: Path) -> LexicalIndex:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)
        try:
            stats = json.loads((directory / STATS_FILE).read_text())
            bm25 = bm25s.BM25.load(str(directory), show_progress=False, verbosity=0)
            df = np.load(directory / DF_FILE)
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"cannot read the BM25 index at {directory}: {exc}") from None
        params = LexicalParams(float(stats["k1"]), float(stats["b"]), str(stats["method"]))
        try:
            analyzer = Analyzer(str(stats.get("analysis", NO_ANALYSIS)))
        except ValueError as exc:
            raise ArtifactError(f"the BM25 index at {directory}: {exc}") from None
        index = cls(bm25, df, float(stats["avg_length"]), params, analyzer)
        if index.size != int(stats["items"]) or len(df) != len(index._vocab):
            raise ArtifactError(f"the BM25 index at {directory} does not match its {STATS_FILE}")
        return index

    def _term_ids(self, query: str) -> list[int]:
        """The query's known terms, repeats kept: a word the query says twice weighs twice, as in Lucene (on CISI's
        long queries, counting each word once cost BM25 0.06 nDCG@10)."""
        return [self._vocab[t] for t in self.analyzer.tokenize(query) if t in self._vocab]

    def scores(self, query: str) -> np.ndarray:
        """(N,) float32 BM25 score of every item for the query (0 where no query term occurs)."""
        ids = self._term_ids(query)
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        # Each term's postings (item rows and precomputed BM25 weights) summed in one bincount. bm25s's own
        # get_scores_from_ids adds them term by term with np.add.at, about 3x slower here on the request path.
        postings = [slice(self._indptr[t], self._indptr[t + 1]) for t in ids]
        rows = np.concatenate([self._indices[p] for p in postings])
        weights = np.concatenate([self._weights[p] for p in postings])
        return np.bincount(rows, weights=weights, minlength=self.size).astype(np.float32)

    def scores_at(self, query: str, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) float32: exactly `scores(query)[rows]`, from the query terms' postings at those rows only.

        The request path needs BM25 only for a query's ~100 candidates unless BM25 also finds candidates, and a
        whole-catalog score vector costs O(catalog): 1.2 ms a query on the 100k bundle, where words like "a" and
        "glass" are in almost every item. Each row's weights are added in the query's term order, as `scores` adds
        them, so the two agree bit for bit."""
        terms = self._term_ids(query)
        postings = sum(int(self._indptr[t + 1] - self._indptr[t]) for t in terms)
        if not self._rows_sorted or postings + self.size < LOOKUP_COST * len(terms):
            return self.scores(query)[rows]
        rows = np.asarray(rows, dtype=np.int64)
        total = np.zeros(len(rows), dtype=np.float64)  # bincount sums in float64 too
        for term in terms:
            start, end = int(self._indptr[term]), int(self._indptr[term + 1])
            if start == end:
                continue
            items = self._indices[start:end]
            at = np.minimum(np.searchsorted(items, rows), end - start - 1)
            found = items[at] == rows
            total[found] += self._weights[start + at[found]]
        return total.astype(np.float32)

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The best `k` rows with a positive score (fewer when fewer items share a term with the query), best first,
        as (scores, rows); `allowed` (N,) bool keeps only those rows."""
        return self.top(self.scores(query), k, allowed)

    @staticmethod
    def top(scores: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`search` over scores already computed (the service reuses them as the candidates' lexical evidence)."""
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        positive = int(np.count_nonzero(scores))
        k = min(k, positive)
        if k == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))][:k]  # by score, ties by row: deterministic
        return scores[top], top.astype(np.int64)

    def score_texts(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """(D,) BM25 scores of documents that are not in the catalog, with the catalog's document frequencies and
        mean length (the same formula bm25s uses for catalog items), their terms made as the catalog's were."""
        ids = self._term_ids(query)
        out = np.zeros(len(texts), dtype=np.float32)
        if not ids:
            return out
        n, k1, b = self.size, self.params.k1, self.params.b
        idf = {t: math.log(1.0 + (n - self._df[t] + 0.5) / (self._df[t] + 0.5)) for t in set(ids)}
        vocab = self._vocab
        for i, text in enumerate(texts):
            tokens = self.analyzer.tokenize(text)
            counts = Counter(vocab[t] for t in tokens if t in vocab)
            norm = k1 * (1.0 - b + b * len(tokens) / max(self.avg_length, 1e-9))
            out[i] = sum(idf[t] * counts[t] / (counts[t] + norm) for t in ids if counts[t])
        return out
