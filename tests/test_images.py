"""Image decoding, CLIP preprocessing, perceptual hashes and the exported CLIP image tower."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

from index.offline.image_encoder import ImageEncoder
from index.offline.images import (
    ClipPreprocessing,
    ImageError,
    ImageProblem,
    file_md5,
    hamming,
    load_image,
    near_duplicate_pairs,
    perceptual_hash,
)

from .clip_fixtures import ROOT, TinyClip, jpeg_with_orientation, picture, tiny_clip

__all__ = ["tiny_clip"]


def _halves(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return image


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg_with_orientation(_halves(), 6))  # 6: the camera was turned; display rotated 90 cw
    image = load_image(path)
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[0] > 200 and top[2] < 60, "the stored left (red) half must be on top once upright"
    assert bottom[2] > 200 and bottom[0] < 60


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(path, "JPEG", quality=95)  # pure cyan ink
    image = load_image(path)
    assert image.mode == "RGB"
    np.testing.assert_allclose(np.asarray(image)[8, 8], [0, 255, 255], atol=6)


def test_greyscale_and_16_bit_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 100).save(tmp_path / "grey.png")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "white16.png")
    Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(tmp_path / "mid16.png")
    assert load_image(tmp_path / "grey.png").getpixel((3, 3)) == (100, 100, 100)
    assert load_image(tmp_path / "white16.png").getpixel((3, 3)) == (255, 255, 255)
    assert load_image(tmp_path / "mid16.png").getpixel((3, 3)) == (128, 128, 128)


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))  # transparent black: must not turn the picture black
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.putpixel((2, 0), (255, 0, 0, 128))
    rgba.save(tmp_path / "alpha.png")
    image = load_image(tmp_path / "alpha.png")
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (255, 0, 0)
    assert np.allclose(image.getpixel((2, 0)), (255, 127, 127), atol=2)

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png", transparency=0)
    image = load_image(tmp_path / "palette.png")
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 0)) == (0, 255, 0)


def test_unusable_files_raise_with_a_reason(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    picture(1, (200, 150)).save(good, "JPEG", quality=90)
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    cases = {
        "truncated.jpg": ImageProblem.TRUNCATED,
        "noise.jpg": ImageProblem.NOT_AN_IMAGE,
        "absent.jpg": ImageProblem.MISSING,
    }
    for name, problem in cases.items():
        with pytest.raises(ImageError) as caught:
            load_image(tmp_path / name)
        assert caught.value.problem is problem, (name, caught.value)
        assert name in str(caught.value)
    with pytest.raises(ImageError) as caught:
        load_image(good, md5="0" * 32)
    assert caught.value.problem is ImageProblem.CHECKSUM
    assert load_image(good, md5=file_md5(good)).size == (200, 150)


@pytest.mark.parametrize("size", [(940, 627), (433, 650), (224, 224), (100, 50), (31, 300)])
def test_preprocessing_matches_transformers(size: tuple[int, int]) -> None:
    image = picture(size[0] * 7 + size[1], size)
    reference = CLIPImageProcessorPil()(images=[image], return_tensors="np")["pixel_values"][0]
    ours = ClipPreprocessing()(image)
    assert ours.shape == reference.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_preprocessing_follows_the_checkpoint_config() -> None:
    processor = CLIPImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 192, "width": 160})
    ours = ClipPreprocessing.from_config(processor.to_dict())
    image = picture(5, (300, 500))
    reference = processor(images=[image], return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(ours(image), reference, atol=1e-5)
    assert ClipPreprocessing.from_config(ours.to_config()) == ours


def test_phash_is_stable_and_separates_pictures() -> None:
    image = picture(3, (320, 240))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    recompressed = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    assert hamming(perceptual_hash(image), perceptual_hash(recompressed)) <= 4
    assert hamming(perceptual_hash(image), perceptual_hash(image.resize((160, 120)))) <= 4
    assert hamming(perceptual_hash(image), perceptual_hash(picture(4, (320, 240)))) > 10


def test_near_duplicate_pairs_agree_with_brute_force() -> None:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, size=300, dtype=np.int64).astype(np.uint64)
    hashes[7] = hashes[3] ^ np.uint64(0b1011)  # 3 bits apart
    hashes[9] = hashes[3]  # identical
    for threshold in (0, 3, 8, 24):
        brute = sorted(
            (i, j, hamming(int(hashes[i]), int(hashes[j])))
            for i in range(300)
            for j in range(i + 1, 300)
            if hamming(int(hashes[i]), int(hashes[j])) <= threshold
        )
        assert near_duplicate_pairs(hashes, threshold, block=16) == brute
    assert (3, 7, 3) in near_duplicate_pairs(hashes, 3) and (3, 9, 0) in near_duplicate_pairs(hashes, 0)


def test_exported_encoder_matches_clip_get_image_features(tiny_clip: TinyClip) -> None:
    images = [picture(i, size) for i, size in enumerate([(940, 627), (433, 650), (300, 300)])]
    encoder = ImageEncoder(tiny_clip.encoder)
    ours = encoder.encode(images, batch_size=2)
    assert ours.shape == (3, 512) and encoder.dim == 512
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    clip = CLIPModel.from_pretrained(str(tiny_clip.checkpoint), local_files_only=True).eval()
    pixels = CLIPImageProcessorPil.from_pretrained(str(tiny_clip.checkpoint))(images=images, return_tensors="pt")
    with torch.inference_mode():
        reference = clip.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
        reference = torch.nn.functional.normalize(reference, dim=-1).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    assert not np.allclose(ours[0], ours[1], atol=1e-3), "different pictures must get different vectors"


@pytest.mark.integration  # a CLI process that imports torch: seconds, not milliseconds
def test_export_cli_without_a_checkpoint_is_one_sentence(tmp_path: Path) -> None:
    command = ["-m", "index.export.image_encoder", "--clip", str(tmp_path / "nowhere"), "--out", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "holds no CLIP checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
