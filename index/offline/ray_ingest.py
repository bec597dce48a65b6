"""The `ray` engine of catalog ingestion (`python -m index.offline.ingest --engine ray --workers N`).

The chunks that have no usable saved result go through one Ray Data `map_batches` stage, one chunk per batch, over a
fixed pool of `N` actors (fewer when fewer chunks are left). Each actor loads the encoders once (MiniLM, the ONNX
CLIP image tower) and computes a chunk with the local engine's own `process_chunk` (index/offline/chunks.py): image
decoding and phash, the CLIP tower, MiniLM over the text fields, precomputed vectors checked. It returns the chunk's
arrays; the driver (index.offline.ingest) saves each as it arrives, in the same files the local engine writes, and
writes the bundle with the same code. A chunk's vectors are made by the same graphs from the same inputs in the same
batches as in one process, so the bundle is the same, byte for byte, and an interrupted run of either engine is
resumed by either. Only the CLIP session's intra-op thread count differs (a share of the cores per actor); on ONNX
Runtime's CPU provider that changes no bit of the output (tests/test_ray_ingest.py checks it with the tiny tower and
loadtests/bench/ray_ingest.py with ViT-B/32). On CUDA, the single-process engine uses the GPU too, and whether two
runs agree to the bit is up to the CUDA kernels (not checked here: no GPU).

Ray is started here (all of this machine's CPUs) unless the caller started it, or joins a running cluster when
RAY_ADDRESS is set; on a cluster, image paths must be readable from every node. Each actor gets an equal share of
the cluster's CPUs as its decoding threads and CLIP intra-op threads, and, when the cluster has GPUs and
onnxruntime has CUDA (the `gpu` extra), a GPU or an equal share of them.

This module is the only one that imports ray: the base install never needs it.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import ray
import ray.data

from index.offline.chunks import ChunkResult, ChunkTask, Encoders, EncoderSpec, process_chunk
from index.runtime.ort_session import CUDA

log = logging.getLogger(__name__)


class ChunkWorker:
    """One actor of the pool: the encoders, loaded once, and a chunk computed per call.

    Errors that the local engine reports as one sentence (bad vectors, unusable encoder files: ValueError and
    OSError subclasses) come back as the result, so the driver raises the very same exception rather than Ray's
    wrapped traceback; an unreadable image is not an error but a skipped item, inside the chunk.
    """

    def __init__(self, spec: EncoderSpec, threads: int) -> None:
        self.encoders = spec.load(image_threads=threads)
        self.pool = ThreadPoolExecutor(max_workers=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for payload in batch["task"]:
            items, md5 = pickle.loads(payload)
            result: ChunkResult | Exception
            try:
                result = process_chunk(items, md5, self.encoders, self.pool)
            except (ValueError, OSError) as exc:
                result = exc
            results.append(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        # An object array of bytes: Arrow stores it as binary, whatever the bytes (numpy's fixed-width "S" dtype
        # would strip trailing NULs).
        return {"number": batch["number"], "result": np.array(results, dtype=object)}


@dataclass(frozen=True)
class ActorResources:
    """What each actor of the pool asks Ray for, and the threads it runs with."""

    num_cpus: float
    num_gpus: float | None
    threads: int


def actor_resources(workers: int, cluster: dict[str, Any], cuda: bool) -> ActorResources:
    """An equal share of the cluster's CPUs (and GPUs, when onnxruntime can use them) for each of `workers` actors.

    Ray takes fractions only below one unit, so a share above one is rounded down; below one, actors share CPUs
    rather than wait for ones that do not exist.
    """

    def share(total: float) -> float:
        each = total / workers
        return float(math.floor(each)) if each >= 1 else each

    cpus = share(float(cluster.get("CPU", 1)))
    gpus = float(cluster.get("GPU", 0))
    if gpus and not cuda:
        log.warning("the Ray cluster has %g GPUs, but onnxruntime has no CUDA provider (the gpu extra): CPU only", gpus)
    # One ONNX Runtime session uses one device, so more than one GPU per actor would sit idle.
    num_gpus = min(1.0, share(gpus)) if gpus and cuda else None
    return ActorResources(num_cpus=cpus, num_gpus=num_gpus, threads=max(1, math.floor(cpus)))


@dataclass(frozen=True)
class RayRunner:
    """The `ray` engine (index.offline.chunks.ChunkRunner): chunks over a Ray Data actor pool of `workers`."""

    workers: int

    def __call__(
        self, tasks: Sequence[ChunkTask], spec: EncoderSpec, encoders: Encoders
    ) -> Generator[tuple[ChunkTask, ChunkResult], None, None]:
        if not tasks:
            return  # everything was resumed: no reason to start Ray
        if self.workers < 1:
            raise ValueError(f"the ray engine needs at least 1 worker, got {self.workers}")
        started_here = not ray.is_initialized()
        if started_here:
            # Joins the cluster at RAY_ADDRESS when set, else starts one on this machine; stopped below.
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield from self._run(tasks, spec)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, tasks: Sequence[ChunkTask], spec: EncoderSpec) -> Iterator[tuple[ChunkTask, ChunkResult]]:
        # No more actors than chunks: a spare one would only load the encoders and hold resources.
        size = min(self.workers, len(tasks))
        resources = actor_resources(size, ray.cluster_resources(), CUDA in ort.get_available_providers())
        log.info(
            "ray engine: %d chunks over %d actors (%g CPUs, %s GPUs, %d threads each)",
            len(tasks),
            size,
            resources.num_cpus,
            resources.num_gpus or 0,
            resources.threads,
        )
        # Items are pickled by the driver: their optional vectors and free-form attributes have no one Arrow type
        # across rows. One block per chunk, so that chunks spread over the actors one at a time.
        rows = [{"number": task.number, "task": pickle.dumps((task.items, task.md5))} for task in tasks]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ChunkWorker,
            fn_constructor_kwargs={"spec": spec, "threads": resources.threads},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
        )
        dataset.context.enable_progress_bars = False  # the driver's bar counts items; Ray's would interleave with it
        by_number = {task.number: task for task in tasks}
        for row in dataset.iter_rows():  # in the order chunks finish: the driver saves each by its number
            result = pickle.loads(row["result"])
            if isinstance(result, Exception):
                raise result
            yield by_number[int(row["number"])], result
