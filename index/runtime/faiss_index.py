"""Candidate generation with FAISS: inner-product search over unit-norm item vectors (the model's retrieval space).

Exact (IndexFlatIP) for small catalogs; HNSW above `HNSW_MIN_ITEMS`, where exact search costs more than the
ranking budget. A GPU copy is made when `faiss_gpu.gpu_available()`: a FAISS GPU build, a visible GPU, and a test
search there that matches the CPU's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

HNSW_MIN_ITEMS = 50_000


class IndexKind(StrEnum):
    EXACT = "exact"
    HNSW = "hnsw"


@dataclass(frozen=True)
class IndexParams:
    """How the index was built and is searched; recorded in the bundle manifest."""

    kind: IndexKind
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128

    @staticmethod
    def for_size(n_items: int) -> IndexParams:
        return IndexParams(IndexKind.HNSW if n_items >= HNSW_MIN_ITEMS else IndexKind.EXACT)


_search_threads = 0  # 0: OpenMP's default (one thread per core); set_search_threads sets it


def set_search_threads(threads: int) -> None:
    """Cap FAISS's OpenMP pool on every thread that searches from now on. One by default in the service: the worker
    searches a few queries per batch, and an uncapped pool spinning on every core starves the event loop (retrieve
    p99 44 ms vs 6 ms under load here). OpenMP keeps this cap per calling thread (a thread that never set it gets
    one thread per core), so `FaissIndex.search` applies it again on whichever thread searches."""
    global _search_threads
    _search_threads = threads
    faiss.omp_set_num_threads(threads)


def build_index(vectors: np.ndarray, params: IndexParams) -> faiss.Index:
    """An inner-product index over (N, d) float32 unit vectors."""
    dim = vectors.shape[1]
    index: faiss.Index
    if params.kind is IndexKind.HNSW:
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


class FaissIndex:
    """Top-k search over a FAISS index. Not thread-safe on a GPU: one owner thread must call `search`."""

    def __init__(self, index: faiss.Index, params: IndexParams, *, use_gpu: bool = False) -> None:
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = params.ef_search
        if use_gpu and params.kind is IndexKind.EXACT:
            # HNSW has no GPU implementation in faiss; exact search moves to the GPU whole.
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, 0, index)
        self.index = index
        self.params = params
        self.device = "cuda" if use_gpu and params.kind is IndexKind.EXACT else "cpu"

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (Q, k); rows are -1 where fewer than k items qualify.

        `allowed` (N,) bool restricts the search to those rows inside FAISS (a bitmap selector), so a filter never
        leaves the ranker with fewer candidates than asked for while enough items match.
        """
        k = min(k, self.size)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if _search_threads:
            faiss.omp_set_num_threads(_search_threads)  # a thread-local write: cheap beside any search
        if allowed is None:
            return self.index.search(queries, k)
        if self.device == "cuda":
            # GPU indexes take no selector: over-fetch the whole index, then keep the allowed rows in order.
            scores, rows = self.index.search(queries, self.size)
            keep = allowed[rows[0]]
            out_scores, out_rows = np.full((1, k), -np.inf, np.float32), np.full((1, k), -1, np.int64)
            n = min(k, int(keep.sum()))
            out_scores[0, :n], out_rows[0, :n] = scores[0][keep][:n], rows[0][keep][:n]
            return out_scores, out_rows
        bitmap = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        if isinstance(self.index, faiss.IndexHNSW):
            # faiss's SWIG wrappers take these keywords at run time; its type stubs do not know them.
            search = faiss.SearchParametersHNSW(sel=selector, efSearch=self.params.ef_search)  # type: ignore[attr-defined]
        else:
            search = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        return self.index.search(queries, k, params=search)

    @classmethod
    def load(cls, path: Path, params: IndexParams, *, use_gpu: bool = False) -> FaissIndex:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ValueError(f"cannot read FAISS index {path}: {str(exc).splitlines()[0]}") from None
        return cls(index, params, use_gpu=use_gpu)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the approximate search also returned."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, int((e >= 0).sum())) for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits))
