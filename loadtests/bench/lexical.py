r"""BM25 lexical-retrieval benchmark, bm25s versus tantivy: run `.venv/bin/python -m loadtests.bench.lexical`.

At 5,000 and 100,000 documents it measures index build seconds (including the write to a temp dir), index size on
disk, and single-query top-100 latency (one query per call, as the service does; p50/p99 over 500 queries after a
warm-up, `time.perf_counter`), unfiltered and with a filter allowing ~30% of documents, plus the top-10 overlap of
the two libraries. Documents: title + text of data/synthetic/items.jsonl; the 100k catalog adds SYNTHETIC documents
of shuffled words of random items (fixed numpy seed). Queries: the text of data/synthetic/queries.jsonl. bm25s uses
`[^\W_]+` tokens of the lowercased text, tantivy its default tokenizer. Prints a plain-text table and writes it as
markdown to /tmp/bench_lexical.md. If tantivy cannot be imported it is skipped (with a printed line).

With `--analyses none,english --catalog DIR [--catalog DIR ...]` it measures instead what a lexical analysis costs
the service's own index (`index.runtime.lexical`), per catalog (title + text of DIR/items.jsonl, e.g. the 5k
SYNTHETIC default and `python -m training.synthetic --out /tmp/syn100k --items 100000 --queries 200`): build
seconds and vocabulary, then per query (DIR/queries.jsonl, one query per call after a warm-up, p50/p99) the query's
analysis alone, `scores_at` over 100 random candidate rows (the request path's lexical stage when BM25 is not a
candidate source; it analyses the query itself) and `search` top-100 (when it is).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import bm25s
import numpy as np

from index.runtime.lexical import Analyzer, LexicalIndex
from training.paths import ROOT

try:
    import tantivy

    TANTIVY_VERSION = version("tantivy")
    # a text field's "default" tokenizer spelled out, to tokenize queries: split on non-alphanumerics, drop 40+ bytes
    _filters = (tantivy.Filter.remove_long(40), tantivy.Filter.lowercase())
    ANALYZER = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(_filters[0]).filter(_filters[1]).build()
except ImportError:
    tantivy = None

DATA = ROOT / "data" / "synthetic"
OUT_MD = Path("/tmp/bench_lexical.md")
SIZES = (5_000, 100_000)
N_QUERIES, N_WARMUP, TOP_K = 500, 50, 100
K1, B, FILTER_FRACTION, SEED = 1.5, 0.75, 0.3, 0
TOKEN = re.compile(r"[^\W_]+")
HEADER = ("library", "items", "build s", "size MB", "p50 ms", "p99 ms", "filtered p50 ms", "top-10 overlap")

Hits = tuple[np.ndarray, np.ndarray]  # (row ids, scores), best first, only rows that match
Search = Callable[[str, np.ndarray | None], Hits]  # (query, filter mask or None) -> hits


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_documents(n: int, rng: np.random.Generator) -> list[str]:
    """The catalog's documents, then synthetic ones: two random items' words, shuffled, cut to a third's length."""
    items = read_jsonl(DATA / "items.jsonl")
    base = [f"{item.get('title') or ''} {item.get('text') or ''}".strip() for item in items]
    words = [doc.split() for doc in base]
    docs = base[:n]
    for a, b, c in rng.integers(0, len(base), size=(max(0, n - len(base)), 3)):
        docs.append(" ".join(rng.permutation(words[a] + words[b])[: len(words[c])]))
    return docs


def load_queries(docs: list[str], rng: np.random.Generator) -> list[str]:
    """Query texts; if there are too few, snippets of 2-4 words cut from random documents."""
    queries = [row["text"] for row in read_jsonl(DATA / "queries.jsonl") if row.get("text")]
    while len(queries) < N_WARMUP + N_QUERIES:
        words = docs[rng.integers(len(docs))].split()
        start = rng.integers(max(1, len(words) - 2))
        queries.append(" ".join(words[start : start + rng.integers(2, 5)]))
    return queries[: N_WARMUP + N_QUERIES]


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def latency_ms(search: Search, queries: list[str], mask: np.ndarray | None) -> tuple[float, float]:
    """p50 and p99 of one-query-per-call latency, after a warm-up."""
    for query in queries[:N_WARMUP]:
        search(query, mask)
    times = []
    for query in queries[N_WARMUP:]:
        start = time.perf_counter()
        search(query, mask)
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return float(p50), float(p99)


def build_bm25s(docs: list[str], path: Path, k1: float = K1) -> tuple[bm25s.BM25, float]:
    start = time.perf_counter()
    retriever = bm25s.BM25(k1=k1, b=B)  # method="lucene", numpy backend
    retriever.index([tokenize(doc) for doc in docs], show_progress=False)
    retriever.save(str(path), show_progress=False)
    return retriever, time.perf_counter() - start


def bm25s_get_scores(retriever: bm25s.BM25, query: str, mask: np.ndarray | None) -> Hits:
    """Score every document from the token ids, then `np.argpartition` of the NEGATED scores at k=100: numpy's
    introselect at kth=n-100 (what `retrieve` does) is ~20x slower when most scores tie at 0, as under a filter."""
    scores = retriever.get_scores_from_ids(retriever.get_tokens_ids(tokenize(query)), weight_mask=mask)
    negated = -scores
    top = np.argpartition(negated, TOP_K)[:TOP_K]
    top = top[np.argsort(negated[top], kind="stable")]
    top = top[scores[top] > 0]
    return top, scores[top]


def bm25s_retrieve(retriever: bm25s.BM25, query: str, mask: np.ndarray | None) -> Hits:
    """bm25s' own `retrieve` on a batch of one query (no threads, no progress bar)."""
    tokens = [t for t in tokenize(query) if t in retriever.vocab_dict]
    if not tokens:  # retrieve raises on a query with no known token
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    res = retriever.retrieve([tokens], k=TOP_K, show_progress=False, n_threads=0, weight_mask=mask)
    keep = res.scores[0] > 0
    return res.documents[0][keep], res.scores[0][keep]


def build_service(docs: list[str], path: Path) -> tuple[LexicalIndex, float]:
    """The service's own index (`index.runtime.lexical`: bm25s postings, scored with one bincount per query)."""
    start = time.perf_counter()
    index = LexicalIndex.build(docs)
    index.save(path)
    return index, time.perf_counter() - start


def service_search(index: LexicalIndex, query: str, mask: np.ndarray | None) -> Hits:
    scores, rows = index.search(query, TOP_K, mask)
    return rows, scores


def build_tantivy(docs: list[str], mask: np.ndarray, path: Path) -> tuple[Any, float]:
    """Text field `body` (default tokenizer) plus an indexed u64 `allow` field for the filter."""
    start = time.perf_counter()
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("body", stored=False)
    builder.add_unsigned_field("allow", indexed=True)
    path.mkdir(parents=True)
    index = tantivy.Index(builder.build(), path=str(path))
    writer = index.writer(heap_size=200_000_000, num_threads=1)  # one thread: one segment, doc id == row
    for doc, allowed in zip(docs, mask):
        writer.add_document(tantivy.Document.from_dict({"body": doc, "allow": int(allowed)}, index.schema))
    writer.commit()
    writer.wait_merging_threads()
    index.reload()
    return index, time.perf_counter() - start


def tantivy_search(index: Any, searcher: Any, allow: Any, query: str, mask: np.ndarray | None) -> Hits:
    """An OR of a term query per token (default analyzer), no hit count; the filter is the zero-score MUST `allow`.
    Not `parse_query`: its query language makes "sunset-orange" a phrase and "-", "+", ":", quotes operators."""
    terms = [(tantivy.Occur.Should, tantivy.Query.term_query(index.schema, "body", t)) for t in ANALYZER.analyze(query)]
    parsed = tantivy.Query.boolean_query(terms)
    if mask is not None:  # the mask is indexed as the `allow` field
        parsed = tantivy.Query.boolean_query([(tantivy.Occur.Must, parsed), (tantivy.Occur.Must, allow)])
    hits = searcher.search(parsed, limit=TOP_K, count=False).hits
    return np.array([a.doc for _, a in hits], dtype=np.int64), np.array([s for s, _ in hits], dtype=np.float32)


def top10_overlap(a: Search, b: Search, queries: list[str]) -> float:
    """Mean fraction of shared ids in the two unfiltered top-10 lists (ties may be broken differently)."""
    shared = [len(set(a(q, None)[0][:10].tolist()) & set(b(q, None)[0][:10].tolist())) / 10 for q in queries]
    return float(np.mean(shared))


def render(rows: list[tuple[Any, ...]], markdown: bool, header: tuple[str, ...] = HEADER) -> str:
    cells = [header] + [tuple(f"{c:.3f}" if isinstance(c, float) else str(c) for c in row) for row in rows]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join([lines[0], "|" + "---|" * len(header)] + lines[1:])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells)


def bench_size(n: int, tmp: Path, notes: list[str]) -> list[tuple[Any, ...]]:
    """All table rows for one catalog size; appends remarks on it to `notes`."""
    rng = np.random.default_rng(SEED)
    docs = load_documents(n, rng)
    queries = load_queries(docs, rng)
    mask = rng.random(len(docs)) < FILTER_FRACTION
    retriever, build_s = build_bm25s(docs, tmp / f"bm25s_{n}")
    notes.append(f"{n} items: bm25s vocabulary {len(retriever.vocab_dict)}, {len(retriever.scores['data'])} postings.")
    fast = partial(bm25s_get_scores, retriever)
    service, service_s = build_service(docs, tmp / f"service_{n}")
    candidates = [
        ("bm25s get_scores+argpartition", fast, build_s, tmp / f"bm25s_{n}"),
        ("bm25s retrieve", partial(bm25s_retrieve, retriever), build_s, tmp / f"bm25s_{n}"),
        ("service LexicalIndex (bincount)", partial(service_search, service), service_s, tmp / f"service_{n}"),
    ]
    engine = None
    if tantivy is not None:
        index, engine_build_s = build_tantivy(docs, mask, tmp / f"tantivy_{n}")
        searcher = index.searcher()
        assert searcher.num_segments == 1, "rows are read from DocAddress.doc, which needs a single segment"
        allow = tantivy.Query.const_score_query(tantivy.Query.term_query(index.schema, "allow", 1), 0.0)
        engine = partial(tantivy_search, index, searcher, allow)
        candidates.append((f"tantivy {TANTIVY_VERSION}", engine, engine_build_s, tmp / f"tantivy_{n}"))
        same_k1 = partial(bm25s_get_scores, build_bm25s(docs, tmp / f"bm25s_k1.2_{n}", k1=1.2)[0])
        overlap = top10_overlap(engine, same_k1, queries[N_WARMUP:])
        notes.append(f"{n} items: top-10 overlap of tantivy with bm25s at k1=1.2 (tantivy's own k1): {overlap:.3f}.")
    rows = []
    for name, search, seconds, path in candidates:
        other = fast if search is engine else engine
        overlap = top10_overlap(search, other, queries[N_WARMUP:]) if other else "-"
        p50, p99 = latency_ms(search, queries, None)
        rows.append((name, n, seconds, dir_mb(path), p50, p99, latency_ms(search, queries, mask)[0], overlap))
    return rows


ANALYSIS_HEADER = (
    "catalog",
    "items",
    "analysis",
    "build s",
    "terms",
    "analyse p50 us",
    "analyse p99 us",
    "scores_at(100) p50 us",
    "scores_at(100) p99 us",
    "search p50 ms",
    "search p99 ms",
)


def interleaved_us(calls: dict[str, Callable[[str], object]], queries: list[str]) -> dict[str, tuple[float, float]]:
    """p50 and p99 microseconds per query of each call, one query per call after a warm-up. The calls take turns
    on each query, so that a machine whose speed drifts (or that others share) slows them alike."""
    for query in queries[:N_WARMUP]:
        for call in calls.values():
            call(query)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for query in queries[N_WARMUP:]:
        for name, call in calls.items():
            start = time.perf_counter()
            call(query)
            times[name].append(time.perf_counter() - start)
    out = {}
    for name, seconds in times.items():
        p50, p99 = np.percentile(seconds, [50, 99]) * 1e6
        out[name] = (float(p50), float(p99))
    return out


def bench_analyses(catalog: Path, analyses: list[str]) -> list[tuple[Any, ...]]:
    """One row per analysis over the catalog at `catalog` (title + text of items.jsonl, its queries.jsonl)."""
    items = read_jsonl(catalog / "items.jsonl")
    docs = ["\n".join(part for part in (item.get("title"), item.get("text")) if part) for item in items]
    del items
    texts = [row["text"] for row in read_jsonl(catalog / "queries.jsonl") if row.get("text")]
    queries = (texts * (1 + (N_WARMUP + N_QUERIES) // max(1, len(texts))))[: N_WARMUP + N_QUERIES]
    rng = np.random.default_rng(SEED)
    rows = {q: rng.integers(0, len(docs), size=TOP_K) for q in queries}  # ~100 candidates, fixed per query
    indexes, build_s = {}, {}
    for name in analyses:
        start = time.perf_counter()
        indexes[name] = LexicalIndex.build(docs, analysis=name)
        build_s[name] = time.perf_counter() - start
    analyse = interleaved_us({a: Analyzer(a).tokenize for a in analyses}, queries)
    at = interleaved_us({a: partial(lambda i, q: i.scores_at(q, rows[q]), i) for a, i in indexes.items()}, queries)
    search = interleaved_us({a: partial(lambda i, q: i.search(q, TOP_K), i) for a, i in indexes.items()}, queries)
    return [
        (catalog.name, len(docs), a, build_s[a], indexes[a].vocabulary_size, *analyse[a], *at[a])
        + (search[a][0] / 1e3, search[a][1] / 1e3)
        for a in analyses
    ]


def main_analyses(catalogs: list[Path], analyses: list[str]) -> None:
    rows = [row for catalog in catalogs for row in bench_analyses(catalog, analyses)]
    print(render(rows, markdown=False, header=ANALYSIS_HEADER))
    print(
        f"\n- bm25s {bm25s.__version__}, the service's LexicalIndex (k1={K1}, b={B}); documents: title + text of "
        "each catalog's items.jsonl (SYNTHETIC catalogs are so named by their generator); queries: its queries.jsonl, "
        f"{N_QUERIES} timed after {N_WARMUP} warm-up (repeated where the file has fewer), one per call, the "
        "analyses taking turns on each query."
        "\n- analyse: the query's terms alone (Analyzer.tokenize); scores_at(100): BM25 at 100 random rows, query "
        f"analysis included (the request path's lexical stage); search: top-{TOP_K} over the whole catalog."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.lexical", description=__doc__.splitlines()[0])
    parser.add_argument("--analyses", help="comma-separated lexical analyses to compare, e.g. none,english")
    parser.add_argument("--catalog", type=Path, action="append", help="a catalog directory (with --analyses)")
    args = parser.parse_args(argv)
    if args.analyses:
        main_analyses(args.catalog or [DATA], [a.strip() for a in args.analyses.split(",") if a.strip()])
        return
    notes = [
        f"bm25s {bm25s.__version__}: k1={K1}, b={B}, Lucene IDF, numpy backend; tokens `[^\\W_]+` of lowercased text.",
        f"Latency: one query per call, top-{TOP_K}, {N_QUERIES} queries after {N_WARMUP} warm-up, query tokenizing "
        f"included; the filter allows {FILTER_FRACTION:.0%} of documents (bm25s: boolean weight_mask).",
        f"Corpus: title + text of {DATA.name}/items.jsonl; beyond its items documents are SYNTHETIC (shuffled "
        f"words of random items, numpy seed {SEED}). Build time includes writing the index to a temp dir.",
    ]
    if tantivy is None:
        print("tantivy is not importable (pip install tantivy): skipping tantivy, benchmarking bm25s only.")
    else:
        notes.append(
            f"tantivy {TANTIVY_VERSION}: DEFAULT tokenizer on a text field (queries: OR of its term queries), 1 writer "
            "thread, filter = MUST clause on a u64 field; fixed k1=1.2, b=0.75. Overlap is with bm25s get_scores."
        )
    with tempfile.TemporaryDirectory(prefix="bench_lexical_") as tmp:
        rows = [row for n in SIZES for row in bench_size(n, Path(tmp), notes)]
    bullets = "\n".join(f"- {note}" for note in notes)
    print(render(rows, markdown=False) + "\n\n" + bullets)
    OUT_MD.write_text(f"# Lexical retrieval benchmark\n\n{render(rows, markdown=True)}\n\n{bullets}\n")
    print(f"\nwrote {OUT_MD}")


if __name__ == "__main__":
    main()
