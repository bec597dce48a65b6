"""The real catalog: 500 Pexels photographs (read from ../shared, never copied into the repo) ingested end to end
and served by /rank. The photos have no captions and no labels: this proves the path works on real images, not that
the ranking is any good. Skips, saying why, when ../shared is absent."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.offline.images import load_image, perceptual_hash
from index.offline.ingest import IngestConfig, IngestReport, ingest
from index.runtime.bundle import Bundle
from service.app import create_app

from .clip_fixtures import TinyClip, copy_pexels, ingest_config, require_pexels, tiny_clip
from .conftest import TinyPipeline, serving_settings

__all__ = ["tiny_clip"]

NEAR_DUPLICATE = ("pexels_cocktails_3430547", "pexels_cocktails_3430555")


@pytest.fixture(scope="module")
def pexels(tiny: TinyPipeline, tiny_clip: TinyClip, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    source = require_pexels()
    out = tmp_path_factory.mktemp("pexels") / "bundle"
    yield ingest(ingest_config(tiny, tiny_clip, source, out, chunk_size=64)), out


def test_all_500_photos_are_ingested_and_the_duplicate_pair_reported(pexels: tuple[IngestReport, Path]) -> None:
    report, out = pexels
    assert report.items_read == report.items_indexed == report.images_encoded == 500
    assert report.skipped == []
    assert [(d.first, d.second) for d in report.near_duplicates] == [NEAR_DUPLICATE]
    bundle = Bundle.load(out)
    assert bundle.size == 500 and bundle.image.shape == (500, 512)
    assert bundle.titles[bundle.row_of["pexels_cocktails_10014905"]] == "photo pexels_cocktails_10014905"
    assert bundle.manifest["image_encoder"]["name"] == "tiny-clip"
    assert all(path is not None and Path(path).is_file() for path in bundle.images)  # for the workbench's pictures


def test_pexels_bundle_is_served_by_rank(pexels: tuple[IngestReport, Path], tiny: TinyPipeline) -> None:
    _, out = pexels
    with TestClient(create_app(serving_settings(tiny, bundle_dir=out))) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["items"] == 500
        response = client.post("/rank", json={"query": "a cocktail with a lime wedge", "top_k": 5})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 5 and len({r["id"] for r in results}) == 5
    assert all(r["id"].startswith("pexels_cocktails_") and r["title"] == f"photo {r['id']}" for r in results)


def test_phash_reproduces_the_manifest() -> None:
    source = require_pexels()
    with open(source / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[::10]  # 50 photos
    assert all(perceptual_hash(load_image(source / r["file"])) == int(r["phash"], 16) for r in rows)


def test_corrupt_and_missing_photos_are_reported_and_skipped(
    tiny: TinyPipeline, tiny_clip: TinyClip, tmp_path: Path
) -> None:
    rows = copy_pexels(tmp_path, 6)  # a scratch copy: the shared photos are never touched
    truncated, flipped = tmp_path / rows[1]["file"], tmp_path / rows[3]["file"]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # decodes to a damaged picture; the md5 catches it
    flipped.write_bytes(bytes(data))
    rows[1]["md5"] = ""  # no recorded checksum: the decoder alone must notice the cut
    rows.append({**rows[0], "id": "pexels_cocktails_missing", "file": "images/missing.jpg", "md5": ""})
    with open(tmp_path / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    report = ingest(
        IngestConfig(
            data=tmp_path,
            model_dir=tiny.model,
            text_encoder_dir=tiny.encoder,
            image_encoder_dir=tiny_clip.encoder,
            out=tmp_path / "bundle",
        )
    )
    assert report.items_read == 7 and report.items_indexed == 4
    assert {s.id: s.problem for s in report.skipped} == {
        rows[1]["id"]: "truncated",
        rows[3]["id"]: "checksum mismatch",
        "pexels_cocktails_missing": "missing",
    }
    saved = json.loads((tmp_path / "bundle" / "ingest_report.json").read_text())
    assert saved["skipped_by_problem"] == {"truncated": 1, "checksum mismatch": 1, "missing": 1}
    assert Bundle.load(tmp_path / "bundle").size == 4
