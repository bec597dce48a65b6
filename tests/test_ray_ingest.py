"""Ingestion on Ray Data (`--engine ray`): the same bundle, byte for byte, as the single-process engine, and after an
interrupted run too, whichever engine saved the first chunks. Real photos, read in place from ../shared; skips,
saying why, without the `ray` extra or without ../shared."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from index.offline.ingest import Engine, IngestConfig, IngestReport, ingest
from index.runtime.bundle import MANIFEST_FILE
from loadtests.bench.ray_ingest import bundle_digests

from .clip_fixtures import TinyClip, add_defective_records, ingest_config, require_pexels, tiny_clip, write_items
from .conftest import TinyPipeline

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
from index.offline.ray_ingest import actor_resources  # noqa: E402  (needs ray, so after the skip)

__all__ = ["tiny_clip"]
pytestmark = pytest.mark.integration

PHOTOS = 22  # + a corrupt file, a missing one and a precomputed vector: 25 items, 7 chunks of 4 (the last of 1)
CHUNK = 4


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """Ray in this process, on the two cores the tests are sized for; the engine uses it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """items.jsonl over the first Pexels photos (absolute paths into ../shared), with a broken and a missing file."""
    source = require_pexels()
    root = tmp_path_factory.mktemp("ray-catalog")
    with open(source / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:PHOTOS]
    records = [
        {"id": row["id"], "title": f"photo {i}", "image": str(source / row["file"])} for i, row in enumerate(rows)
    ]
    (root / "images").mkdir()
    add_defective_records(records, root / "images", seed=3, at=(3, 9))
    return write_items(root / "items.jsonl", records)


@pytest.fixture(scope="module")
def local_bundle(
    tiny: TinyPipeline, tiny_clip: TinyClip, catalog: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[IngestReport, Path]:
    out = tmp_path_factory.mktemp("ray-reference") / "bundle"
    return ingest(ingest_config(tiny, tiny_clip, catalog, out, chunk_size=CHUNK)), out


def _ray_config(tiny: TinyPipeline, clip: TinyClip, catalog: Path, out: Path) -> IngestConfig:
    return ingest_config(tiny, clip, catalog, out, chunk_size=CHUNK, engine=Engine.RAY, workers=2)


def test_ray_engine_writes_the_local_bundle_byte_for_byte(
    tiny: TinyPipeline,
    tiny_clip: TinyClip,
    catalog: Path,
    local_bundle: tuple[IngestReport, Path],
    ray_cluster: None,
    tmp_path: Path,
) -> None:
    local, local_out = local_bundle
    report = ingest(_ray_config(tiny, tiny_clip, catalog, tmp_path / "bundle"))
    assert report.engine == "ray" and local.engine == "local"
    assert report.items_read == 25 and report.items_indexed == 23 and report.images_encoded == PHOTOS
    assert report.chunks == 7 and report.chunks_resumed == 0
    assert report.skipped == local.skipped and {s.id for s in report.skipped} == {"broken", "gone"}
    assert report.near_duplicates == local.near_duplicates
    digests = bundle_digests(tmp_path / "bundle")
    assert len(digests) >= 10 and digests == bundle_digests(local_out)
    assert report.bundle_version == local.bundle_version


@pytest.mark.parametrize("first", [Engine.RAY, Engine.LOCAL])
def test_interrupted_run_resumed_on_ray_gives_the_same_bytes(
    first: Engine,
    tiny: TinyPipeline,
    tiny_clip: TinyClip,
    catalog: Path,
    local_bundle: tuple[IngestReport, Path],
    ray_cluster: None,
    tmp_path: Path,
) -> None:
    """A run stopped after 3 of 7 chunks (by either engine) and finished by Ray: chunks saved by the first run are
    reused, whichever engine saved them, and the bundle is the uninterrupted local run's."""
    cfg = _ray_config(tiny, tiny_clip, catalog, tmp_path / "bundle")

    def stop_after_three(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(dataclasses.replace(cfg, engine=first), on_chunk=stop_after_three)
    saved = sorted(p.name for p in cfg.resolved_work_dir.glob("chunk-*.npz"))
    assert len(saved) == 3 and not (tmp_path / "bundle" / MANIFEST_FILE).exists()

    report = ingest(cfg)
    _, local_out = local_bundle
    assert report.chunks_resumed == 3 and report.images_encoded < PHOTOS
    assert bundle_digests(tmp_path / "bundle") == bundle_digests(local_out)


def test_actor_resources_share_the_cluster() -> None:
    two_on_laptop = actor_resources(2, {"CPU": 2.0}, cuda=False)
    assert (two_on_laptop.num_cpus, two_on_laptop.num_gpus, two_on_laptop.threads) == (1.0, None, 1)
    crowded = actor_resources(4, {"CPU": 2.0}, cuda=False)  # more actors than cores: they share, none waits
    assert (crowded.num_cpus, crowded.threads) == (0.5, 1)
    gpu_box = actor_resources(2, {"CPU": 16.0, "GPU": 1.0}, cuda=True)
    assert (gpu_box.num_cpus, gpu_box.num_gpus, gpu_box.threads) == (8.0, 0.5, 8)
    many_gpus = actor_resources(2, {"CPU": 7.0, "GPU": 8.0}, cuda=True)  # one session uses one GPU
    assert (many_gpus.num_cpus, many_gpus.num_gpus) == (3.0, 1.0)
    assert actor_resources(2, {"CPU": 16.0, "GPU": 1.0}, cuda=False).num_gpus is None  # CPU onnxruntime
