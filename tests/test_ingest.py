"""Catalog ingestion: awkward images through the whole path, skipped items reported, resumable work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index.cli.ingest import main
from index.offline.image_encoder import ImageEncoder
from index.offline.images import load_image
from index.offline.ingest import IngestConfig, ingest
from index.runtime.bundle import Bundle

from .clip_fixtures import (
    ROOT,
    TinyClip,
    add_defective_records,
    ingest_config,
    picture,
    tiny_clip,
    write_awkward_images,
    write_items,
)
from .conftest import TinyPipeline

__all__ = ["tiny_clip"]


def _catalog(root: Path, count: int) -> Path:
    """items.jsonl over `count` awkward images, one corrupt file, one missing file and one precomputed vector."""
    names = write_awkward_images(root / "images", count)
    records = [
        {"id": f"item-{i:03d}", "title": f"drink number {i}", "image": f"images/{name}", "attributes": {"n": i}}
        for i, name in enumerate(names)
    ]
    add_defective_records(records, root / "images", seed=9, at=(2, 5))
    return write_items(root / "items.jsonl", records)


def _config(tiny: TinyPipeline, clip: TinyClip, data: Path, out: Path, **overrides: object) -> IngestConfig:
    return ingest_config(tiny, clip, data, out, **{"chunk_size": 4, **overrides})


def _checksums(bundle: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {"version": manifest["version"], "files": manifest["files"]}


def test_awkward_catalog_ingests_and_reports_what_it_skipped(
    tiny: TinyPipeline, tiny_clip: TinyClip, tmp_path: Path
) -> None:
    items = _catalog(tmp_path / "catalog", 14)
    report = ingest(_config(tiny, tiny_clip, items, tmp_path / "bundle"))
    assert report.items_read == 17 and report.items_indexed == 15 and report.images_encoded == 14
    assert {(s.id, s.problem) for s in report.skipped} == {("broken", "truncated"), ("gone", "missing")}
    assert report.skipped_by_problem == {"truncated": 1, "missing": 1}

    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.size == 15 and "broken" not in bundle.row_of and "gone" not in bundle.row_of
    np.testing.assert_allclose(np.linalg.norm(bundle.image, axis=1), 1.0, atol=1e-5)
    given = json.loads((tmp_path / "catalog" / "items.jsonl").read_text().splitlines()[-1])["image_embedding"]
    np.testing.assert_allclose(bundle.image[bundle.row_of["given"]], given, atol=1e-7)
    # each decoded image's vector is what the encoder gives for that file on its own
    encoder = ImageEncoder(tiny_clip.encoder)
    rotated = load_image(tmp_path / "catalog" / "images" / "img001_rotated.jpg")
    np.testing.assert_allclose(bundle.image[bundle.row_of["item-001"]], encoder.encode([rotated])[0], atol=1e-5)
    assert bundle.manifest["image_encoder"]["dim"] == 512 and bundle.manifest["ingest"]["skipped"] == 2
    saved = json.loads((tmp_path / "bundle" / "ingest_report.json").read_text())
    assert saved["items_indexed"] == 15 and len(saved["skipped"]) == 2
    assert not (tmp_path / "bundle.work").exists(), "the work directory is removed after a finished run"


def test_near_duplicates_are_reported_and_kept(tiny: TinyPipeline, tiny_clip: TinyClip, tmp_path: Path) -> None:
    images = tmp_path / "catalog" / "images"
    images.mkdir(parents=True)
    for i in range(3):
        picture(100 + i, (320, 240)).save(images / f"p{i}.jpg", quality=92)
    picture(100, (320, 240)).resize((300, 225)).save(images / "p0_small.png")  # same picture, resized, other format
    records = [{"id": p.stem, "title": "photo", "image": f"images/{p.name}"} for p in sorted(images.iterdir())]
    report = ingest(
        _config(tiny, tiny_clip, write_items(tmp_path / "catalog" / "items.jsonl", records), tmp_path / "b")
    )
    assert [(d.first, d.second) for d in report.near_duplicates] == [("p0", "p0_small")]
    assert report.near_duplicates[0].distance <= 4 and report.items_indexed == 4


def test_interrupted_ingest_resumes_to_the_same_bundle(tiny: TinyPipeline, tiny_clip: TinyClip, tmp_path: Path) -> None:
    items = _catalog(tmp_path / "catalog", 21)  # 24 items -> 6 chunks of 4
    whole = ingest(_config(tiny, tiny_clip, items, tmp_path / "whole"))
    assert whole.chunks == 6 and whole.chunks_resumed == 0

    cfg = _config(tiny, tiny_clip, items, tmp_path / "resumed")

    def stop_halfway(done: int, total: int) -> None:
        if done == total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(cfg, on_chunk=stop_halfway)
    assert sorted(p.name for p in cfg.resolved_work_dir.iterdir()) == [f"chunk-{i:06d}.npz" for i in range(3)]
    assert not (tmp_path / "resumed" / "manifest.json").exists()

    resumed = ingest(cfg)
    assert resumed.chunks_resumed == 3 and resumed.images_encoded < whole.images_encoded
    assert _checksums(tmp_path / "resumed") == _checksums(tmp_path / "whole")
    assert resumed.skipped == whole.skipped


def test_a_changed_image_invalidates_only_its_chunk(tiny: TinyPipeline, tiny_clip: TinyClip, tmp_path: Path) -> None:
    items = _catalog(tmp_path / "catalog", 9)  # 12 items -> 3 chunks
    cfg = _config(tiny, tiny_clip, items, tmp_path / "bundle", keep_work=True)
    first = ingest(cfg)
    before = _checksums(tmp_path / "bundle")
    again = ingest(cfg)
    assert again.chunks_resumed == 3 and again.images_encoded == 0 and _checksums(tmp_path / "bundle") == before

    changed = tmp_path / "catalog" / "images" / "img000.jpg"  # item-000, in the first chunk
    picture(999).save(changed, "JPEG", quality=90)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = ingest(cfg)
    assert third.chunks_resumed == 2 and third.images_encoded == 3
    assert third.bundle_version != first.bundle_version


def test_killed_ingest_process_resumes_to_the_same_bundle(
    tiny: TinyPipeline, tiny_clip: TinyClip, tmp_path: Path
) -> None:
    """A real kill -9 in the middle of the run, not a polite exception: saved chunks must be whole."""
    items = _catalog(tmp_path / "catalog", 61)  # 64 items, 64 chunks of 1
    command = [
        sys.executable,
        "-m",
        "index.offline.ingest",
        "--data",
        str(items),
        "--model",
        str(tiny.model),
        "--encoder",
        str(tiny.encoder),
        "--image-encoder",
        str(tiny_clip.encoder),
        "--chunk-size",
        "1",
        "--workers",
        "1",
    ]
    reference = ingest(_config(tiny, tiny_clip, items, tmp_path / "whole", chunk_size=1))
    work = tmp_path / "killed.work"
    process = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and len(list(work.glob("chunk-*.npz"))) < 8:
            time.sleep(0.005)
        process.kill()
    finally:
        process.wait(timeout=60)
    assert process.returncode == -9, "the run finished before it could be killed; the test proved nothing"
    saved = len(list(work.glob("chunk-*.npz")))
    assert 8 <= saved < 64

    finished = subprocess.run([*command, "--out", str(tmp_path / "killed")], cwd=ROOT, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    report = json.loads((tmp_path / "killed" / "ingest_report.json").read_text())
    assert report["chunks_resumed"] >= saved - 1  # the chunk being written at the kill may be redone
    assert _checksums(tmp_path / "killed") == _checksums(tmp_path / "whole")
    assert report["bundle_version"] == reference.bundle_version


def test_cli_errors_are_one_sentence(tiny: TinyPipeline, tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.jsonl", [{"id": "a", "title": "x", "image": "a.jpg"}])
    cases = [
        (["--data", str(tmp_path / "nowhere")], "no such file or directory"),
        (["--data", str(items), "--model", str(tiny.model), "--image-encoder", str(tmp_path)], "not an image-encoder"),
    ]
    for args, message in cases:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "index.offline.ingest",
                *args,
                "--encoder",
                str(tiny.encoder),
                "--out",
                str(tmp_path / "o"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_vector_catalog_ingests_to_the_bundle_make_index_builds(tiny: TinyPipeline, tmp_path: Path) -> None:
    """No images to encode: ingestion must give, file for file, the bundle `make index` gives."""
    cfg = IngestConfig(
        data=tiny.data, model_dir=tiny.model, text_encoder_dir=tiny.encoder, image_encoder_dir=None, out=tmp_path / "b"
    )
    report = ingest(cfg)
    assert report.images_encoded == 0 and report.items_indexed == 400
    assert _checksums(tmp_path / "b") == _checksums(tiny.bundle)


def test_ray_engine_without_ray_is_one_sentence_and_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--engine ray` where Ray is not installed (simulated: `import ray` fails) says which extra to install, before
    any work; the local engine never imports Ray at all."""
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "index.offline.ray_ingest", raising=False)
    code = main(["--data", str(tmp_path), "--engine", "ray", "--out", str(tmp_path / "o")])
    assert code == 2
    assert capsys.readouterr().err == "error: install the ray extra: pip install -e '.[ray]'\n"
    assert not (tmp_path / "o.work").exists()

    probe = "import sys, index.offline.ingest; assert 'ray' not in sys.modules, 'the base install imports ray'"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
