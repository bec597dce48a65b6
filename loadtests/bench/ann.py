"""FAISS index families at catalog scale, HNSW against IVF-PQ: `.venv/bin/python -m loadtests.bench.ann`.

For each vector dimension (default 128, the learned candidate space, and 384, the MiniLM dense space) it builds, over
the same SYNTHETIC vectors:

- `Flat`: exact inner-product search (IndexFlatIP), the ground truth for recall;
- `HNSW`: what the service builds above 50k items (index.runtime.faiss_index.build_index: HNSW32, efConstruction
  200, efSearch 128, inner product);
- `IVF-PQ`: `IVF{nlist},PQ{m}x8np`, nlist the power of two nearest 4*sqrt(N), m = d/4 (4 dimensions per
  sub-quantizer, 8 bits each: d/4 bytes of code per item, 1/16 of the float32 vector), a flat coarse quantizer,
  trained on 40*nlist items (FAISS warns below 39), searched at each `--nprobe`;
- `IVF-PQ+refine`: the same index re-ranking its top k*`--refine-k-factor` by exact inner product with the float
  vectors (IndexRefineFlat, which holds its own copy of them);
- `IVF-PQ x2 shards` (first dimension only; `--no-shards` skips it): the IVF-PQ items split over two copies of the
  trained index in a threaded `IndexShards` (one thread per shard, results merged), against the single index.

Per index: build seconds (wall and process CPU), index bytes (`faiss.serialize_index`; the table's MB are 10^6
bytes), the process RSS growth over the build and its peak during the build (MiB, from /proc/self/status; the peak
is VmHWM after resetting it, empty where /proc does not allow that),
recall@100 against exact search (mean share of the exact top 100 found), p50/p99 ms of single-query search (one
query per call, k=100, 1 FAISS thread, as the service searches; after a warm-up) and queries/s of one batched call
of every query on 1 thread. Builds run on `--build-threads` FAISS threads.

Data is SYNTHETIC: a Gaussian mixture of `--clusters` clusters (log-normal sizes) in a low-dimensional latent space
(d/4 + 8 dimensions, power-law spectrum), mapped into d dimensions by a random orthonormal basis, plus a shared
mean direction and isotropic noise, L2-normalised. Its constants were picked so that the share of variance in the
top principal components, the mean cosine of random pairs and the cosines of a query's 1st and 100th neighbours
are close to those of the 100k bench bundle's `retrieval.npy` and `text.npy` (themselves made from the SYNTHETIC
catalog). Queries are fresh draws from the same mixture: near the data, never an item.

`--hnsw-items 384=200000` builds HNSW over the first 200,000 items only for that dimension (HNSW builds are the
slow part); its recall is then against exact search over the same items. Prints a markdown table; writes JSON to
`reports/bench_ann-<time>.json` after every row, so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.runtime.faiss_index import IndexKind, IndexParams, build_index, recall_at_k
from training.paths import ROOT

K = 100
CHUNK = 100_000  # rows generated at a time, to bound the float32 temporaries


class SyntheticSpace:
    """A SYNTHETIC embedding space: unit vectors from a Gaussian mixture with a low-dimensional latent structure."""

    def __init__(self, dim: int, clusters: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.latent = dim, dim // 4 + 8
        scale = np.arange(1, self.latent + 1, dtype=np.float32) ** -0.45  # power-law spectrum of the latent axes
        self.scale = scale / np.sqrt((scale**2).sum())
        self.centers = rng.standard_normal((clusters, self.latent), dtype=np.float32) * self.scale
        weights = rng.lognormal(0.0, 1.0, clusters)
        self.weights = weights / weights.sum()
        basis, _ = np.linalg.qr(rng.standard_normal((dim, self.latent)))
        self.basis = basis.T.astype(np.float32)  # (latent, dim), orthonormal rows
        mean = rng.standard_normal(dim).astype(np.float32)
        self.mean = 0.95 * mean / np.linalg.norm(mean)  # what every vector shares (mean cosine about 0.42)
        self.spread, self.noise = 0.45, 0.3 / np.sqrt(dim)  # within-cluster spread, isotropic noise

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, dim) float32 unit vectors."""
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            cluster = rng.choice(len(self.centers), size=m, p=self.weights)
            z = (
                self.centers[cluster]
                + self.spread * rng.standard_normal((m, self.latent), dtype=np.float32) * self.scale
            )
            x = self.mean + z @ self.basis + self.noise * rng.standard_normal((m, self.dim), dtype=np.float32)
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


@dataclass
class Row:
    """One index at one search setting: what the table prints and the JSON holds."""

    dim: int
    index: str
    items: int
    factory: str
    search: str
    build_s: float
    build_cpu_s: float
    index_bytes: int
    rss_delta_mib: float
    build_peak_rss_delta_mib: float | None
    recall_at_100: float
    p50_ms: float
    p99_ms: float
    batch_qps: float | None
    timed_queries: int
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_per_item(self) -> float:
        return self.index_bytes / self.items


@dataclass
class Built:
    index: Any
    wall_s: float
    cpu_s: float
    rss_delta_mib: float
    peak_delta_mib: float | None


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed_build(threads: int, make: Callable[..., Any], *args: Any) -> Built:
    """`make(*args)` on `threads` FAISS threads: its wall and CPU seconds and what it grew the process's RSS by."""
    faiss.omp_set_num_threads(threads)
    rss0, peak_ok = _status_kb("VmRSS"), _reset_peak()
    wall, cpu = time.perf_counter(), time.process_time()
    index = make(*args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rss1 = _status_kb("VmRSS")
    peak = (_status_kb("VmHWM") - rss0) / 1024 if peak_ok else None
    faiss.omp_set_num_threads(1)
    return Built(index, wall, cpu, (rss1 - rss0) / 1024, peak)


def single_query_search(index: Any, queries: np.ndarray, warmup: int) -> tuple[np.ndarray, list[float]]:
    """Rows of the top K for each query after the first `warmup`, searched one per call; ms per call."""
    faiss.omp_set_num_threads(1)
    for i in range(warmup):
        index.search(queries[i : i + 1], K)
    rows, times = [], []
    for i in range(warmup, len(queries)):
        started = time.perf_counter()
        _, found = index.search(queries[i : i + 1], K)
        times.append((time.perf_counter() - started) * 1e3)
        rows.append(found[0])
    return np.stack(rows), times


def batch_qps(index: Any, queries: np.ndarray) -> float:
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    index.search(queries, K)
    return len(queries) / (time.perf_counter() - started)


def measure(
    built: Built,
    *,
    dim: int,
    name: str,
    factory: str,
    search: str,
    queries: np.ndarray,
    warmup: int,
    truth: np.ndarray,
    batch: bool = True,
    index_bytes: int | None = None,
    notes: list[str] | None = None,
    build: tuple[float, float] | None = None,
) -> Row:
    """Search `built.index` with every query and score it against `truth` (exact top K of the timed queries)."""
    found, ms = single_query_search(built.index, queries, warmup)
    wall, cpu = build if build is not None else (built.wall_s, built.cpu_s)
    return Row(
        dim=dim,
        index=name,
        items=int(built.index.ntotal),
        factory=factory,
        search=search,
        build_s=round(wall, 2),
        build_cpu_s=round(cpu, 2),
        index_bytes=index_bytes if index_bytes is not None else len(faiss.serialize_index(built.index)),
        rss_delta_mib=round(built.rss_delta_mib, 1),
        build_peak_rss_delta_mib=None if built.peak_delta_mib is None else round(built.peak_delta_mib, 1),
        recall_at_100=round(recall_at_k(found, truth[: len(found)]), 4),
        p50_ms=round(float(np.percentile(ms, 50)), 3),
        p99_ms=round(float(np.percentile(ms, 99)), 3),
        batch_qps=round(batch_qps(built.index, queries[warmup:]), 1) if batch else None,
        timed_queries=len(ms),
        notes=notes or [],
    )


def exact_top_k(flat: faiss.Index, queries: np.ndarray, threads: int) -> np.ndarray:
    """The exact top K rows of each query: one batched search of an IndexFlatIP on `threads` threads."""
    faiss.omp_set_num_threads(threads)
    _, rows = flat.search(queries, K)
    faiss.omp_set_num_threads(1)
    return rows


def nlist_for(n: int) -> int:
    """The power of two nearest 4*sqrt(N) (FAISS's guideline for IVF lists is 4-16 x sqrt(N))."""
    return 2 ** round(math.log2(4 * math.sqrt(n)))


class Recorder:
    """Rows so far, printed as they come and written to the JSON file after each one."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        self.rows: list[Row] = []
        self.started = time.perf_counter()

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.log(
            f"{row.dim}-d {row.index} {row.search}: build {row.build_s}s, {row.index_bytes / 1e6:.1f} MB, "
            f"recall {row.recall_at_100}, p50 {row.p50_ms} ms, p99 {row.p99_ms} ms"
        )
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            **self.meta,
            "elapsed_s": round(time.perf_counter() - self.started, 1),
            "loadavg_end": os.getloadavg(),
            "rows": [{**asdict(r), "bytes_per_item": round(r.bytes_per_item, 1)} for r in self.rows],
        }
        self.path.write_text(json.dumps(body, indent=2) + "\n")


def bench_dim(dim: int, args: argparse.Namespace, rec: Recorder, shards: bool) -> None:
    space = SyntheticSpace(dim, args.clusters, args.seed)
    vectors = space.sample(args.items, np.random.default_rng(args.seed + 1))
    queries = space.sample(args.queries + args.warmup, np.random.default_rng(args.seed + 2))
    timed = queries[args.warmup :]
    rec.log(f"{dim}-d: {args.items:,} SYNTHETIC vectors, {args.queries} queries")
    threads = args.build_threads
    flat = timed_build(threads, _flat, vectors)
    truth = exact_top_k(flat.index, timed, threads)
    n_flat = min(args.flat_queries, args.queries)
    rec.add(
        measure(
            flat,
            dim=dim,
            name="Flat (exact)",
            factory="Flat",
            search="",
            queries=queries[: args.warmup + n_flat],
            warmup=args.warmup,
            truth=truth,
            batch=False,
            notes=[f"latency over the first {n_flat} queries"],
        )
    )
    del flat

    nlist, m = nlist_for(args.items), dim // 4
    factory = f"IVF{nlist},PQ{m}x8np"  # np: no polysemous training (slow, and unused at polysemous_ht 0)
    train_n = min(args.items, 40 * nlist)
    sample = vectors[np.random.default_rng(args.seed + 3).choice(args.items, size=train_n, replace=False)]
    trained = timed_build(threads, _trained, factory, dim, sample)
    empty = faiss.clone_index(trained.index)  # the trained, empty index: the shards start from it
    added = timed_build(threads, _added, trained.index, vectors)
    ivf: Any = added.index  # an IndexIVFPQ (the faiss stubs type it as Index)
    build = (trained.wall_s + added.wall_s, trained.cpu_s + added.cpu_s)
    both = Built(
        ivf, *build, trained.rss_delta_mib + added.rss_delta_mib, _max(trained.peak_delta_mib, added.peak_delta_mib)
    )
    train_note = f"train {trained.wall_s:.1f}s on {train_n:,} items, add {added.wall_s:.1f}s"
    ivf_bytes = len(faiss.serialize_index(ivf))
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        rec.add(
            measure(
                both,
                dim=dim,
                name="IVF-PQ",
                factory=factory,
                search=f"nprobe={nprobe}",
                queries=queries,
                warmup=args.warmup,
                truth=truth,
                index_bytes=ivf_bytes,
                notes=[train_note],
            )
        )

    refined = timed_build(threads, _refined, ivf, vectors)
    refined.index.k_factor = args.refine_k_factor
    refined_bytes = len(faiss.serialize_index(refined.index))
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        rec.add(
            measure(
                refined,
                dim=dim,
                name="IVF-PQ+refine",
                factory=f"{factory},RFlat",
                search=f"nprobe={nprobe},k_factor={args.refine_k_factor}",
                queries=queries,
                warmup=args.warmup,
                truth=truth,
                index_bytes=refined_bytes,
                build=(build[0] + refined.wall_s, build[1] + refined.cpu_s),
                notes=[train_note, f"refine copy {refined.wall_s:.1f}s; bytes include the float32 vectors"],
            )
        )
    del refined

    if shards:
        sharded = timed_build(threads, _sharded, empty, vectors, 2)
        count = sharded.index.count()
        shard_bytes = sum(len(faiss.serialize_index(sharded.index.at(i))) for i in range(count))
        for nprobe in args.nprobe:
            for i in range(count):
                faiss.extract_index_ivf(sharded.index.at(i)).nprobe = nprobe
            rec.add(
                measure(
                    sharded,
                    dim=dim,
                    name="IVF-PQ x2 shards",
                    factory=f"IndexShards(2 x {factory})",
                    search=f"nprobe={nprobe}",
                    queries=queries,
                    warmup=args.warmup,
                    truth=truth,
                    batch=False,  # a batch would run 2 OpenMP threads in each shard's thread
                    index_bytes=shard_bytes,
                    notes=["threaded IndexShards, one thread per shard; build = add only (the trained index copied)"],
                )
            )
        del sharded
    del ivf, both, added, trained, empty

    n_hnsw = min(args.items, args.hnsw_items.get(dim, args.items))
    hnsw_truth, notes = truth, []
    if n_hnsw < args.items:
        hnsw_truth = exact_top_k(_flat(vectors[:n_hnsw]), timed, threads)
        notes = [f"built over the first {n_hnsw:,} of the {args.items:,} items; recall against exact over those"]
    params = IndexParams(IndexKind.HNSW)
    rec.log(f"{dim}-d: building HNSW over {n_hnsw:,} items")
    hnsw = timed_build(threads, build_index, vectors[:n_hnsw], params)
    rec.add(
        measure(
            hnsw,
            dim=dim,
            name="HNSW",
            factory=f"HNSW{params.hnsw_m},Flat efConstruction={params.ef_construction}",
            search=f"efSearch={params.ef_search}",
            queries=queries,
            warmup=args.warmup,
            truth=hnsw_truth,
            notes=notes,
        )
    )


def _flat(vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def _trained(factory: str, dim: int, sample: np.ndarray) -> faiss.Index:
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    return index


def _added(index: faiss.Index, vectors: np.ndarray) -> faiss.Index:
    index.add(vectors)
    return index


def _refined(index: faiss.Index, vectors: np.ndarray) -> faiss.IndexRefineFlat:
    """`index` re-ranked by exact inner product with its own float32 copy of `vectors`."""
    return faiss.IndexRefineFlat(index, faiss.swig_ptr(vectors))


def _sharded(empty: faiss.Index, vectors: np.ndarray, count: int) -> faiss.IndexShards:
    """`count` copies of the trained `empty`, each over a contiguous slice; successive ids keep the global rows."""
    # threaded, successive_ids: faiss's SWIG constructor takes them; its type stubs do not know them
    shards: Any = faiss.IndexShards(empty.d, True, True)  # type: ignore[call-arg]
    shards.own_indices = True
    for part in np.array_split(np.arange(len(vectors)), count):
        shard: Any = faiss.clone_index(empty)
        shard.add(vectors[part[0] : part[-1] + 1])
        shards.add_shard(shard)
        shard.this.disown()  # the IndexShards frees it
    return shards


def _max(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(a, b)


def markdown(rows: list[Row]) -> str:
    head = (
        "| dim | index | items | search | build s (CPU s) | index MB | bytes/item | RSS delta MiB | "
        "recall@100 | p50 ms | p99 ms | batch q/s |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r.dim} | {r.index} | {r.items:,} | {r.search} | {r.build_s:.1f} ({r.build_cpu_s:.1f}) | "
            f"{r.index_bytes / 1e6:.1f} | {r.bytes_per_item:.0f} | {r.rss_delta_mib:.0f} | {r.recall_at_100:.4f} | "
            f"{r.p50_ms:.3f} | {r.p99_ms:.3f} | {'' if r.batch_qps is None else f'{r.batch_qps:.0f}'} |"
        )
    return "\n".join(lines)


def _dim_items(text: str) -> dict[int, int]:
    pairs = [part.split("=") for part in text.split(",") if part]
    return {int(d): int(n) for d, n in pairs}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.ann", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="catalog size (default 1,000,000)")
    parser.add_argument("--dims", default="128,384", help="vector dimensions, comma-separated (default 128,384)")
    parser.add_argument("--hnsw-items", type=_dim_items, default={}, help="DIM=N,...: HNSW over N items for DIM")
    parser.add_argument("--queries", type=int, default=500, help="timed queries (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed queries searched first (default 50)")
    parser.add_argument("--flat-queries", type=int, default=100, help="timed queries for exact search (default 100)")
    parser.add_argument("--nprobe", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 64])
    parser.add_argument("--refine-k-factor", type=int, default=4)
    parser.add_argument("--no-shards", dest="shards", action="store_false", help="skip the IndexShards rows")
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument(
        "--build-threads",
        type=int,
        default=2,
        help="FAISS threads for builds (default 2; searches use 1). On a busy 2-core machine 1 can be faster",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default reports/bench_ann-<time>.json)")
    args = parser.parse_args(argv)
    dims = [int(d) for d in args.dims.split(",")]
    if any(d % 4 for d in dims):
        parser.error("every dimension must be a multiple of 4 (PQ with d/4 sub-quantizers)")
    now = dt.datetime.now(dt.UTC)
    out = args.out or ROOT / "reports" / f"bench_ann-{now:%Y%m%d-%H%M%S}.json"
    loadavg = os.getloadavg()
    meta: dict[str, Any] = {
        "benchmark": "loadtests.bench.ann",
        "data": "SYNTHETIC Gaussian-mixture unit vectors (see the module docstring)",
        "started": now.isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "argv": sys.argv[1:] if argv is None else argv,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "niceness": os.nice(0),
        "loadavg_start": loadavg,
        "k": K,
    }
    rec = Recorder(out, meta)
    for i, dim in enumerate(dims):
        bench_dim(dim, args, rec, shards=args.shards and i == 0)
    rec.write()
    print(
        f"FAISS {faiss.__version__}, SYNTHETIC vectors (Gaussian mixture, {args.clusters} clusters, unit norm), "
        f"inner product, k={K}; single-query p50/p99 over {args.queries} queries after {args.warmup} warm-up, "
        f"1 thread; builds on {args.build_threads} thread(s); {os.cpu_count()} CPUs, load average at start "
        f"{loadavg[0]:.1f}, at end {os.getloadavg()[0]:.1f}; "
        f"total {time.perf_counter() - rec.started:.0f} s."
    )
    print()
    print(markdown(rec.rows))
    notes = sorted({f"{r.dim}-d {r.index}: {n}" for r in rec.rows for n in r.notes})
    if notes:
        print()
        print("\n".join(f"- {n}" for n in notes))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
