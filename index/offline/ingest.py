"""Catalog ingestion at scale: `python -m index.offline.ingest --data DIR` (or `make ingest DATA=DIR`).

Reads a catalog in the user data format (docs/data.md), or a folder of images described by a `manifest.csv`;
decodes and encodes images in batches with the ONNX CLIP image tower and embeds titles with MiniLM; reports images
that could not be used (and skips their items) and near-duplicate images (perceptual hash); and writes the same
bundle as `make index`, with `ingest_report.json` beside the manifest.

Work is saved per chunk of items in a work directory. A run that was interrupted (Ctrl-C, a kill, a crash)
continues from its last saved chunk when the same command is run again, and ends with the same bundle, byte for
byte, as an uninterrupted run. A chunk is reused only while its items, their image files (size and mtime) and the
encoders are unchanged; anything else is recomputed.

The chunks not saved yet are computed by one of two engines (`--engine`), both running `process_chunk`
(index/offline/chunks.py): `local`, in this process with a pool of decoding threads, or `ray`, by a Ray Data actor
pool (index/offline/ray_ingest.py, the `ray` extra). Either way this process saves each chunk and writes the bundle,
so both give the same bytes.

This module is the library (`ingest(IngestConfig)`); its command line is index/cli/ingest.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from index.data.records import DataError, Item
from index.data.verdict import read_catalog
from index.offline.bundle_writer import bundle_analysis, write_bundle
from index.offline.chunks import (
    ChunkResult,
    ChunkRunner,
    ChunkTask,
    Encoders,
    EncoderSpec,
    SkippedItem,
    needs_image,
    process_chunk,
)
from index.offline.featurize import features_from_arrays, item_text
from index.offline.images import near_duplicate_pairs
from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel
from index.runtime.faiss_index import IndexKind, IndexParams
from index.runtime.files import write_json

log = logging.getLogger(__name__)

INGEST_FORMAT = 1
REPORT_FILE = "ingest_report.json"
DEFAULT_CHUNK = 256
# phash bits that may differ for two images to count as near-duplicates. On the 500 Pexels photos the one re-upload
# pair differs in 6 bits, the closest distinct shots (same shoot, another moment) in 10, unrelated photos in 16+.
DEFAULT_DUP_DISTANCE = 8
RAY_MISSING = "install the ray extra: pip install -e '.[ray]'"


class Engine(StrEnum):
    """What computes the chunks that are not saved yet: this process, or a Ray Data actor pool."""

    LOCAL = "local"
    RAY = "ray"


class EngineUnavailable(RuntimeError):
    """The engine asked for needs a package that is not installed (the message says which extra)."""


@dataclass(frozen=True)
class NearDuplicate:
    """Two items whose images are perceptually (almost) the same; both stay in the bundle."""

    first: str
    second: str
    distance: int


@dataclass
class IngestReport:
    """What an ingestion run did; written to `ingest_report.json` and logged."""

    source: str
    bundle: str
    bundle_version: str
    items_read: int
    items_indexed: int
    images_encoded: int
    skipped: list[SkippedItem]
    near_duplicates: list[NearDuplicate]
    dup_max_distance: int
    chunks: int
    chunks_resumed: int
    seconds: float
    image_seconds: float
    images_per_second: float
    text: dict[str, int]  # texts embedded, how many were cut at the encoder's limit, and the limit (word pieces)
    engine: str = Engine.LOCAL.value

    @property
    def skipped_by_problem(self) -> dict[str, int]:
        return dict(Counter(s.problem for s in self.skipped))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["skipped_by_problem"] = self.skipped_by_problem
        return data


@dataclass(frozen=True)
class IngestConfig:
    """Inputs and knobs of one ingestion run; the CLI's options mirror it."""

    data: Path
    model_dir: Path = Path("artifacts")
    text_encoder_dir: Path = Path("artifacts/encoders/minilm")
    image_encoder_dir: Path | None = Path("artifacts/encoders/clip")
    out: Path = Path("artifacts/bundle")
    work_dir: Path | None = None  # default: <out>.work beside the bundle
    chunk_size: int = DEFAULT_CHUNK
    workers: int = 2  # image-decoding threads (local engine) or actors in the pool (ray engine)
    engine: Engine = Engine.LOCAL
    dup_max_distance: int = DEFAULT_DUP_DISTANCE
    index_kind: str = "auto"
    keep_work: bool = False
    analysis: str | None = None  # BM25's lexical analysis; the model's when not given (`bundle_analysis`)

    @property
    def resolved_work_dir(self) -> Path:
        return self.work_dir or self.out.parent / f"{self.out.name}.work"


def _file_state(path: str | None) -> list[Any]:
    if not path:
        return []
    try:
        stat = os.stat(path)
    except OSError:
        return ["absent"]
    return [stat.st_size, stat.st_mtime_ns]


def _vector_digest(vector: Sequence[float] | None) -> str | None:
    if vector is None:
        return None
    return hashlib.sha256(np.asarray(vector, dtype=np.float32).tobytes()).hexdigest()[:16]


def _fingerprint(items: Sequence[Item], md5: dict[str, str], encoders: dict[str, Any]) -> str:
    """What a chunk's result depends on: items, image files as they are now, and the encoders."""
    state = {
        "format": INGEST_FORMAT,
        "encoders": encoders,
        "items": [
            [
                item.id,
                item_text(item),
                item.image,
                _file_state(item.image) if needs_image(item) else None,
                md5.get(item.id),
                _vector_digest(item.text_embedding),
                _vector_digest(item.image_embedding),
            ]
            for item in items
        ],
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LocalRunner:
    """The single-process engine: chunks one after another, images decoded by a pool of `workers` threads."""

    workers: int

    def __call__(
        self, tasks: Sequence[ChunkTask], spec: EncoderSpec, encoders: Encoders
    ) -> Generator[tuple[ChunkTask, ChunkResult], None, None]:
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            for task in tasks:
                yield task, process_chunk(task.items, task.md5, encoders, pool)


def _runner(cfg: IngestConfig) -> ChunkRunner:
    if cfg.engine is Engine.LOCAL:
        return LocalRunner(cfg.workers)
    try:
        from index.offline.ray_ingest import RayRunner
    except ImportError as exc:
        # Only a missing Ray is the user's to fix by installing; any other import error is a bug to show as is.
        if exc.name is None or exc.name.split(".")[0] != "ray":
            raise
        raise EngineUnavailable(RAY_MISSING) from exc
    return RayRunner(cfg.workers)


def ingest(cfg: IngestConfig, *, on_chunk: Callable[[int, int], None] | None = None) -> IngestReport:
    """Ingest the catalog at cfg.data into a bundle at cfg.out, resuming saved work; returns the report.

    Args:
        cfg: inputs, outputs and knobs.
        on_chunk: called as on_chunk(done, total) after each computed chunk is saved, `done` counting resumed
            chunks too (progress hooks; an exception raised here interrupts the run like Ctrl-C would, leaving the
            saved chunks for the next run).
    """
    started = time.perf_counter()
    if cfg.chunk_size < 1:
        raise ValueError(f"chunk size must be at least 1, got {cfg.chunk_size}")
    runner = _runner(cfg)  # first: a missing engine is refused before any work
    if not Path(cfg.data).exists():  # the likeliest mistake, said before the model is loaded
        raise DataError(f"{cfg.data}: no such file or directory")
    ranker = ExportedModel(cfg.model_dir)
    analyzer = bundle_analysis(ranker.card, cfg.analysis)  # a conflict is refused before the long work
    # The same verdict as `make validate --model` and `make index`: items with nothing the model can use are skipped.
    catalog = read_catalog(cfg.data, schema=ranker.card.schema, judged=False)
    spec = EncoderSpec(
        text_dir=cfg.text_encoder_dir,
        image_dir=cfg.image_encoder_dir,
        schema=ranker.card.schema,
        images_to_encode=sum(needs_image(item) for item in catalog.items),
    )
    encoders = spec.load()
    catalog.measure_texts(encoders.text)
    catalog.log(log)
    # The engine is not part of a chunk's identity: chunks saved by one engine are resumed by the other.
    identity = encoders.identity() | {"chunk_size": cfg.chunk_size}
    items = catalog.items
    bounds = [(s, min(s + cfg.chunk_size, len(items))) for s in range(0, len(items), cfg.chunk_size)]
    work = cfg.resolved_work_dir
    work.mkdir(parents=True, exist_ok=True)
    log.info("ingesting %d items from %s in %d chunks (work in %s)", len(items), catalog.source, len(bounds), work)

    chunks: dict[int, ChunkResult] = {}
    tasks: list[ChunkTask] = []
    for number, (start, end) in enumerate(bounds):
        part = items[start:end]
        fingerprint = _fingerprint(part, catalog.image_md5, identity)
        path = work / f"chunk-{number:06d}.npz"
        saved = ChunkResult.load(path, fingerprint)
        if saved is not None:
            chunks[number] = saved
        else:
            md5 = {item.id: catalog.image_md5[item.id] for item in part if item.id in catalog.image_md5}
            tasks.append(ChunkTask(number, part, md5, fingerprint, path))
    resumed = len(chunks)
    if resumed:
        log.info("resumed %d of %d chunks saved by an earlier run", resumed, len(bounds))

    done_items = sum(len(c.ids) for c in chunks.values())
    with (
        tqdm(total=len(items), initial=done_items, unit="item", desc="ingest", mininterval=1.0) as bar,
        closing(runner(tasks, spec, encoders)) as results,  # closed on an interrupt too: threads, actors stop
    ):
        for task, chunk in results:
            chunk.save(task.path, task.fingerprint)
            chunks[task.number] = chunk
            bar.update(len(task.items))
            if on_chunk is not None:
                on_chunk(len(chunks), len(bounds))
    ordered = [chunks[number] for number in range(len(bounds))]  # catalog order, whatever order they finished in

    ok = np.concatenate([c.ok for c in ordered])
    skipped = [s for c in ordered for s in c.skipped]
    for s in skipped:
        log.warning("skipped item %s: %s: %s (%s)", s.id, s.path, s.problem, s.detail)
    kept = [item for item, keep in zip(items, ok) if keep]
    if not kept:
        raise DataError(f"{catalog.source}: no item could be ingested ({len(skipped)} skipped)")
    hashed = np.concatenate([c.hashed for c in ordered])[ok]
    phash = np.concatenate([c.phash for c in ordered])[ok]
    hashed_rows = np.flatnonzero(hashed)
    duplicates = [
        NearDuplicate(kept[hashed_rows[i]].id, kept[hashed_rows[j]].id, d)
        for i, j, d in near_duplicate_pairs(phash[hashed_rows], cfg.dup_max_distance)
    ]
    for dup in duplicates:
        log.warning("near-duplicate images: %s and %s (phash distance %d)", dup.first, dup.second, dup.distance)

    schema = ranker.card.schema
    features = features_from_arrays(
        kept, schema, np.concatenate([c.text for c in ordered])[ok], np.concatenate([c.image for c in ordered])[ok]
    )
    params = IndexParams.for_size(len(kept)) if cfg.index_kind == "auto" else IndexParams(IndexKind(cfg.index_kind))
    text_info = catalog.text
    extra = {
        "text": text_info,
        "image_encoder": None if encoders.image is None else encoders.image.describe(),
        "ingest": {"format": INGEST_FORMAT, "items_read": catalog.items_read, "skipped": len(skipped)},
        "catalog": {"items_read": catalog.items_read, "skipped": catalog.counts["items_skipped"]},
    }
    write_bundle(cfg.out, kept, features, ranker, params, extra=extra, analysis=analyzer)
    bundle = Bundle.load(cfg.out)
    bundle.check_compatible(ranker.card)

    images_encoded = sum(c.images_encoded for c in ordered)
    image_seconds = sum(c.image_seconds for c in ordered)
    report = IngestReport(
        source=str(catalog.source),
        bundle=str(cfg.out),
        bundle_version=bundle.version,
        items_read=catalog.items_read,
        items_indexed=bundle.size,
        images_encoded=images_encoded,
        skipped=skipped,
        near_duplicates=duplicates,
        dup_max_distance=cfg.dup_max_distance,
        chunks=len(bounds),
        chunks_resumed=resumed,
        seconds=round(time.perf_counter() - started, 3),
        image_seconds=round(image_seconds, 3),
        images_per_second=round(images_encoded / image_seconds, 2) if image_seconds > 0 else 0.0,
        text=text_info,
        engine=cfg.engine.value,
    )
    write_json(cfg.out / REPORT_FILE, report.to_dict())
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    # The command line lives in index/cli/ingest.py: it also exports a missing CLIP image tower (index.export, which
    # is built on this package and so is never imported by it). `python -m index.offline.ingest` keeps its name.
    from index.cli.ingest import main

    sys.exit(main())
