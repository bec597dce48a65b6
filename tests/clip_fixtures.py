"""Shared helpers for the image tests: a tiny randomly initialised CLIPModel (no CLIP weights exist on this machine)
exported once per session, generated test pictures in every awkward format, and where the real photos live."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from index.offline.ingest import IngestConfig
from training.paths import ROOT

from .conftest import TinyPipeline

SHARED_PEXELS = ROOT.parent / "shared" / "data" / "pexels_cocktails"
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class TinyClip:
    """A local CLIPModel directory (as save_pretrained writes it) and its exported ONNX image encoder."""

    checkpoint: Path
    encoder: Path


_built: dict[Path, TinyClip] = {}


def build_tiny_clip(root: Path) -> TinyClip:
    """Random CLIPModel with a 2-layer 32-wide ViT at CLIP's 224px/32px-patch geometry; projection_dim 512 so its
    vectors have the feature schema's image_dim. Built once per session whichever test module asks first."""
    if root in _built:
        return _built[root]
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from index.export.image_encoder import export_image_encoder
    from loadtests.bench.images import TINY_VISION

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 100,
            "max_position_embeddings": 16,
        },
        vision_config=TINY_VISION,
        projection_dim=512,
    )
    checkpoint = root / "tiny-clip"
    CLIPModel(config).eval().save_pretrained(checkpoint)
    CLIPImageProcessorPil().save_pretrained(checkpoint)
    built = TinyClip(checkpoint=checkpoint, encoder=export_image_encoder(checkpoint, root / "tiny-clip-onnx"))
    _built[root] = built
    return built


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    return build_tiny_clip(tmp_path_factory.getbasetemp() / "tiny-clip-root")


def require_pexels() -> Path:
    if not (SHARED_PEXELS / "manifest.csv").exists():
        pytest.skip(f"the real Pexels photos are not here: {SHARED_PEXELS} is absent (../shared beside the repo)")
    return SHARED_PEXELS


def picture(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A deterministic RGB picture with structure (gradients and a block), so hashes and embeddings differ."""
    rng = np.random.default_rng(seed)
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    base = np.stack([x * rng.uniform(50, 255), y * rng.uniform(50, 255), (1 - x) * rng.uniform(50, 255)], axis=-1)
    top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    base[top : top + h // 3, left : left + w // 3] = rng.uniform(0, 255, 3)
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def write_awkward_images(directory: Path, count: int) -> list[str]:
    """`count` images cycling through the formats users send: plain JPEG, EXIF-rotated JPEG, CMYK JPEG, greyscale
    PNG, RGBA PNG, palette PNG with transparency, 16-bit greyscale PNG. Returns file names."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        image = picture(i)
        kind = i % 7
        if kind == 0:
            name = f"img{i:03d}.jpg"
            image.save(directory / name, "JPEG", quality=90)
        elif kind == 1:
            name = f"img{i:03d}_rotated.jpg"
            (directory / name).write_bytes(jpeg_with_orientation(image, 6))
        elif kind == 2:
            name = f"img{i:03d}_cmyk.jpg"
            image.convert("CMYK").save(directory / name, "JPEG", quality=90)
        elif kind == 3:
            name = f"img{i:03d}_grey.png"
            image.convert("L").save(directory / name)
        elif kind == 4:
            name = f"img{i:03d}_alpha.png"
            rgba = image.convert("RGBA")
            rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (64, 1))))
            rgba.save(directory / name)
        elif kind == 5:
            name = f"img{i:03d}_palette.png"
            palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
            palette.info["transparency"] = 0
            palette.save(directory / name, transparency=0)
        else:
            name = f"img{i:03d}_16bit.png"
            grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
            Image.fromarray(grey).save(directory / name)
        names.append(name)
    return names


def write_items(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def add_defective_records(records: list[dict], images: Path, seed: int, at: tuple[int, int]) -> list[dict]:
    """`records` with the three cases ingestion must survive: a corrupt image file (id "broken", inserted at
    `at[0]`), an image file that is not there ("gone", at `at[1]`), both under `images`, and a precomputed image
    vector ("given", appended). Image paths are relative to the catalog file, so `images` must sit beside it."""
    folder = images.name
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    records.insert(at[0], {"id": "broken", "title": "a broken file", "image": f"{folder}/broken.jpg"})
    records.insert(at[1], {"id": "gone", "title": "a file that is not there", "image": f"{folder}/gone.jpg"})
    vector = np.random.default_rng(seed).standard_normal(512)
    unit = (vector / np.linalg.norm(vector)).tolist()
    records.append({"id": "given", "title": "precomputed", "image_embedding": unit})
    return records


def copy_pexels(target: Path, count: int) -> list[dict[str, str]]:
    """Copy the first `count` Pexels photos and their manifest rows into target (a scratch copy to damage)."""
    import csv

    source = require_pexels()
    with open(source / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    (target / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        shutil.copy(source / row["file"], target / row["file"])
    return rows


def ingest_config(tiny: TinyPipeline, clip: TinyClip, data: Path, out: Path, **overrides: Any) -> IngestConfig:
    """Ingestion of `data` into `out` with the tiny pipeline's model and text encoder and the tiny CLIP tower."""
    settings: dict[str, Any] = dict(
        data=data, model_dir=tiny.model, text_encoder_dir=tiny.encoder, image_encoder_dir=clip.encoder, out=out
    )
    return IngestConfig(**{**settings, **overrides})
