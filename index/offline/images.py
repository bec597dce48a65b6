"""Images for catalog ingestion: robust decoding, CLIP's preprocessing and perceptual hashes.

Photos from users come in every shape: EXIF-rotated phone pictures, CMYK JPEGs from print workflows, greyscale,
16-bit and palette PNGs with transparency, files cut short by a failed upload. `load_image` turns each into the RGB
picture a person would see, or raises `ImageError` with a reason; it never hands back a half-decoded image.

`ClipPreprocessing` reproduces transformers' `CLIPImageProcessor` (resize the shortest edge, centre crop, rescale,
normalise) from a checkpoint's own `preprocessor_config.json`, in numpy and PIL, so that batch encoding needs no
torch. `perceptual_hash` is the 64-bit DCT hash of the `imagehash` package (`imagehash.phash`), bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.fft import dct

# CLIP's normalisation constants (OpenAI's training set statistics); a checkpoint's own config overrides them.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PHASH_BITS = 64
# Transparent pixels are shown on white: catalog cut-outs are designed to sit on a white page, and the pixels under
# an alpha of 0 are arbitrary (often black), which would otherwise become part of the embedding.
ALPHA_BACKGROUND = (255, 255, 255)


class ImageProblem(StrEnum):
    """Why an image could not be used; the ingestion report counts skipped items by these."""

    MISSING = "missing"
    UNREADABLE = "unreadable"
    NOT_AN_IMAGE = "not an image"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"
    TOO_LARGE = "too large"
    CHECKSUM = "checksum mismatch"


class ImageError(ValueError):
    """An image file that cannot be used, with the reason as an `ImageProblem` and the decoder's own words."""

    def __init__(self, path: Path, problem: ImageProblem, detail: str) -> None:
        super().__init__(f"{path}: {problem.value} ({detail})")
        self.path = path
        self.problem = problem
        self.detail = detail


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8-bit; PIL's own conversion clips them instead of scaling."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F" and values.max(initial=0.0) <= 1.0:
        values = values * 255.0  # a float image in [0, 1]
    elif image.mode != "F" and values.max(initial=0.0) > 255:
        values = values / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: alpha composited on white, CMYK and greyscale converted, 16-bit scaled to 8-bit."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_eight_bit(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block costs the rotation, not the image."""
    try:
        upright = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        return image
    return upright if upright is not None else image


def load_image(path: Path, *, md5: str | None = None) -> Image.Image:
    """Decode an image file fully into an upright RGB image.

    Args:
        path: the file.
        md5: when given, the file must have this md5 (a manifest's record of the file), else `CHECKSUM`.

    Raises:
        ImageError: the file is missing, unreadable, not an image, truncated, corrupt or a decompression bomb.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, ImageProblem.MISSING, "no such file")
    try:
        if md5 is not None and file_md5(path) != md5.lower():
            raise ImageError(path, ImageProblem.CHECKSUM, f"the file's md5 is not the recorded {md5}")
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated file fails here, not later inside a batch
            return to_rgb(_upright(opened)).copy()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(path, ImageProblem.TOO_LARGE, str(exc)) from None
    except UnidentifiedImageError:
        raise ImageError(path, ImageProblem.NOT_AN_IMAGE, "no image format recognises the file") from None
    except PermissionError as exc:
        raise ImageError(path, ImageProblem.UNREADABLE, exc.strerror or str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports a cut-short file as OSError("image file is truncated ...") and broken data in many other ways.
        detail = str(exc) or type(exc).__name__
        problem = ImageProblem.TRUNCATED if "truncat" in detail.lower() else ImageProblem.CORRUPT
        raise ImageError(path, problem, detail) from None


def _size_of(config: Mapping[str, Any], key: str) -> dict[str, int]:
    value = config.get(key)
    if isinstance(value, int):  # configs written before size dicts existed
        return {"shortest_edge": value} if key == "size" else {"height": value, "width": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"preprocessor config: {key!r} must be a number or a mapping, got {value!r}")
    return {k: int(v) for k, v in value.items() if v is not None}


@dataclass(frozen=True)
class ClipPreprocessing:
    """CLIP's image preprocessing, as `CLIPImageProcessor` does it, from a checkpoint's `preprocessor_config.json`.

    Resize so that the shortest edge is `shortest_edge` (or to exactly `resize_height` x `resize_width`), crop the
    centre `crop_height` x `crop_width`, scale to [0, 1], normalise per channel: (3, crop_height, crop_width).
    """

    shortest_edge: int | None = 224
    resize_height: int | None = None
    resize_width: int | None = None
    crop_height: int = 224
    crop_width: int = 224
    resample: int = int(Image.Resampling.BICUBIC)
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def for_image_size(cls, image_size: int) -> ClipPreprocessing:
        """CLIP's defaults for a model trained at image_size (used when a checkpoint ships no preprocessor config)."""
        return cls(shortest_edge=image_size, crop_height=image_size, crop_width=image_size)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClipPreprocessing:
        size = _size_of(config, "size") if "size" in config else {"shortest_edge": 224}
        crop = _size_of(config, "crop_size") if "crop_size" in config else {"height": 224, "width": 224}
        if "shortest_edge" not in size and not {"height", "width"} <= size.keys():
            raise ValueError(f"preprocessor config: unsupported size {size!r} (need shortest_edge or height/width)")
        mean, std = config.get("image_mean", OPENAI_CLIP_MEAN), config.get("image_std", OPENAI_CLIP_STD)
        return cls(
            shortest_edge=size.get("shortest_edge"),
            resize_height=None if "shortest_edge" in size else size["height"],
            resize_width=None if "shortest_edge" in size else size["width"],
            crop_height=crop["height"],
            crop_width=crop["width"],
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
            do_resize=bool(config.get("do_resize", True)),
            do_center_crop=bool(config.get("do_center_crop", True)),
            do_rescale=bool(config.get("do_rescale", True)),
            do_normalize=bool(config.get("do_normalize", True)),
        )

    @classmethod
    def from_file(cls, path: Path) -> ClipPreprocessing:
        try:
            return cls.from_config(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"missing preprocessor config {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"preprocessor config {path} is malformed: {exc}") from None

    def to_config(self) -> dict[str, Any]:
        """The same settings as a `preprocessor_config.json` that `CLIPImageProcessor` reads."""
        size: dict[str, int] = (
            {"shortest_edge": self.shortest_edge}
            if self.shortest_edge is not None
            else {"height": int(self.resize_height or 0), "width": int(self.resize_width or 0)}
        )
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": self.do_resize,
            "size": size,
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        if self.shortest_edge is None:
            return int(self.resize_width or width), int(self.resize_height or height)
        short, long = (width, height) if width <= height else (height, width)
        if short == self.shortest_edge:
            return width, height
        new_long = int(self.shortest_edge * long / short)  # truncation, as transformers does
        return (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(3, crop_height, crop_width) float32 pixels for one RGB image."""
        if image.mode != "RGB":
            image = to_rgb(image)
        if self.do_resize:
            size = self._resized_size(*image.size)
            if size != image.size:
                image = image.resize(size, resample=Image.Resampling(self.resample))
        pixels = np.asarray(image)  # (H, W, 3) uint8
        if self.do_center_crop:
            pixels = _center_crop(pixels, self.crop_height, self.crop_width)
        out = pixels.astype(np.float64)
        if self.do_rescale:
            out = out * self.rescale_factor
        out32: np.ndarray = out.astype(np.float32)
        if self.do_normalize:
            out32 = (out32 - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(out32.transpose(2, 0, 1))

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(B, 3, crop_height, crop_width) float32."""
        return np.stack([self(image) for image in images]) if images else np.zeros((0, 3, *self.shape), np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.crop_height, self.crop_width


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop (H, W, C); zero padding where the image is smaller than the crop, as transformers does."""
    h, w = pixels.shape[:2]
    if h >= height and w >= width:
        top, left = (h - height) // 2, (w - width) // 2
        return pixels[top : top + height, left : left + width]
    canvas = np.zeros((max(h, height), max(w, width), pixels.shape[2]), dtype=pixels.dtype)
    top, left = -(-(canvas.shape[0] - h) // 2), -(-(canvas.shape[1] - w) // 2)
    canvas[top : top + h, left : left + w] = pixels
    top, left = (canvas.shape[0] - height) // 2, (canvas.shape[1] - width) // 2
    return canvas[top : top + height, left : left + width]


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash, identical to `imagehash.phash(image)` (hash_size 8, highfreq_factor 4).

    Greyscale at 32x32 (Lanczos), 2-D DCT-II, the top-left 8x8 low frequencies, one bit per coefficient above their
    median, row-major with the first coefficient as the most significant bit.
    """
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dct(dct(grey, axis=0), axis=1)[:8, :8]
    bits = (low > np.median(low)).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int, block: int = 2048) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every pair i < j whose hashes differ in at most `max_distance` bits, sorted.

    Exact without comparing all pairs: split the 64 bits into `max_distance + 1` bands; by the pigeonhole principle
    two hashes that differ in at most `max_distance` bits agree on at least one whole band, so only items that share
    a band value are compared (in blocks, to bound memory when many images share one).
    """
    values = np.asarray(hashes, dtype=np.uint64)
    n_bands = max(1, min(max_distance + 1, PHASH_BITS))
    edges = np.linspace(0, PHASH_BITS, n_bands + 1).astype(int)
    found: dict[tuple[int, int], int] = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (values >> np.uint64(lo)) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        sorted_band = band[order]
        starts = np.flatnonzero(np.r_[True, sorted_band[1:] != sorted_band[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(order)]):
            members = np.sort(order[start:end])
            for first in range(0, len(members) - 1, block):
                rows = members[first : first + block]
                cols = members[first:]
                distances = np.bitwise_count(values[rows][:, None] ^ values[cols][None, :])
                close = (distances <= max_distance) & (rows[:, None] < cols[None, :])
                for a, b in zip(*np.nonzero(close)):
                    found[(int(rows[a]), int(cols[b]))] = int(distances[a, b])
    return sorted((i, j, d) for (i, j), d in found.items())
