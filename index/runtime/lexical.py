"""Lexical retrieval: Okapi BM25 over each item's text fields (title and text joined), with bm25s.

bm25s stores the BM25 weight of every (term, item) pair as a sparse matrix, so a query's scores over the whole
catalog are a sum of a few sparse rows: no Python loop over items (`loadtests/bench_lexical.py` measured it against
tantivy; BENCHMARKS.md). The index lives in the bundle's `lexical/` directory, every file checksummed in the manifest.

Documents that are not in the catalog (a `/rerank` plain string) are scored with the catalog's statistics (document
frequencies and mean length), so their scores are on the same scale as a catalog item's.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from index.runtime.files import ArtifactError

log = logging.getLogger(__name__)

TOKEN = re.compile(r"[^\W_]+")  # runs of letters and digits (any script), after lowercasing
STATS_FILE = "stats.json"
DF_FILE = "df.npy"
# One term's binary searches at a query's candidate rows (`scores_at`) cost about as much as summing this many
# postings and catalog rows into a whole-catalog score vector: 12-19 us against 1.2-2 ns an element, measured on the
# 5k and 100k SYNTHETIC bundles. Below it, scoring the whole catalog is the cheaper way to the same numbers.
LOOKUP_COST = 10_000


def tokenize(text: str) -> list[str]:
    """Lowercase runs of letters and digits: what BM25 indexes and queries with. No stemming and no stop words, so
    nothing here assumes one language; BM25's idf already discounts frequent words."""
    return TOKEN.findall(text.lower())


@dataclass(frozen=True)
class LexicalParams:
    """BM25's parameters (the usual k1 and b; bm25s's 'lucene' idf: log(1 + (N - n + 0.5) / (n + 0.5)))."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"


class LexicalIndex:
    """BM25 over a catalog's texts; row i is item i."""

    def __init__(self, bm25: object, df: np.ndarray, avg_length: float, params: LexicalParams) -> None:
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

    @classmethod
    def build(cls, texts: Sequence[str], params: LexicalParams | None = None) -> LexicalIndex:
        import bm25s

        params = params or LexicalParams()
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        tokens = [tokenize(text) for text in texts]
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
        return cls(bm25, df, avg_length, params)

    def save(self, directory: Path) -> list[str]:
        """Write the index into `directory`; returns the file names (for the manifest's checksums)."""
        directory.mkdir(parents=True, exist_ok=True)
        self._bm25.save(str(directory), show_progress=False)  # type: ignore[attr-defined]
        np.save(directory / DF_FILE, self._df)
        stats = {"items": self.size, "avg_length": self.avg_length, **asdict(self.params)}
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
        index = cls(bm25, df, float(stats["avg_length"]), params)
        if index.size != int(stats["items"]) or len(df) != len(index._vocab):
            raise ArtifactError(f"the BM25 index at {directory} does not match its {STATS_FILE}")
        return index

    def _term_ids(self, query: str) -> list[int]:
        """The query's known terms, repeats kept: a word the query says twice weighs twice, as in Lucene (on CISI's
        long queries, counting each word once cost BM25 0.06 nDCG@10)."""
        return [self._vocab[t] for t in tokenize(query) if t in self._vocab]

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
        mean length (the same formula bm25s uses for catalog items)."""
        ids = self._term_ids(query)
        out = np.zeros(len(texts), dtype=np.float32)
        if not ids:
            return out
        n, k1, b = self.size, self.params.k1, self.params.b
        idf = {t: math.log(1.0 + (n - self._df[t] + 0.5) / (self._df[t] + 0.5)) for t in set(ids)}
        vocab = self._vocab
        for i, text in enumerate(texts):
            tokens = tokenize(text)
            counts = Counter(vocab[t] for t in tokens if t in vocab)
            norm = k1 * (1.0 - b + b * len(tokens) / max(self.avg_length, 1e-9))
            out[i] = sum(idf[t] * counts[t] / (counts[t] + norm) for t in ids if counts[t])
        return out
