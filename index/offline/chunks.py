"""One chunk of catalog ingestion, the unit of work both engines share: what goes in (`ChunkTask`, and the
`EncoderSpec` another process loads the same encoders from), how it is computed (`process_chunk`: image decoding
and phash, the CLIP tower, MiniLM over the text fields, precomputed vectors checked), and what comes out
(`ChunkResult`, saved to and resumed from the work directory).

The local engine (index.offline.ingest.LocalRunner) and the Ray engine (index.offline.ray_ingest.RayRunner) both
run `process_chunk` and neither imports the other. Ray pickles `EncoderSpec` to its actors and `ChunkResult` back
by module path, so these classes live here, in a module that is never run as `__main__`: a
`python -m index.offline.ingest` process and its actors find them under the same name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from index.data.records import DataError, Item
from index.offline.featurize import has_text, item_text
from index.offline.image_encoder import ImageEncoder
from index.offline.images import ClipPreprocessing, ImageError, load_image, perceptual_hash
from index.runtime.files import ArtifactError
from index.runtime.text_encoder import TextEncoder
from model.schema import FeatureSchema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedItem:
    """An item left out of the bundle because its image could not be used."""

    id: str
    path: str
    problem: str
    detail: str


def needs_image(item: Item) -> bool:
    """The item has a picture to decode and encode (an item with neither a path nor a vector has no image: masked)."""
    return item.image_embedding is None and bool(item.image)


@dataclass
class Encoders:
    """The encoders a chunk is computed with, loaded by `EncoderSpec.load`, and the widths the model expects."""

    text: TextEncoder
    image: ImageEncoder | None
    text_dim: int
    image_dim: int

    def identity(self) -> dict[str, Any]:
        """What a saved chunk's vectors depend on of the encoders (part of its fingerprint)."""
        return {
            "text": self.text.info.get("files", {}).get("model.onnx", self.text.name),
            "image": None if self.image is None else self.image.version,
            "preprocess": None if self.image is None else dataclasses.asdict(self.image.preprocess),
        }


@dataclass
class ChunkResult:
    """A computed chunk: its items' vectors and phashes, which of them go into the bundle, and those skipped."""

    ids: list[str]
    ok: np.ndarray  # (C,) bool: the item goes into the bundle
    text: np.ndarray  # (C, text_dim)
    image: np.ndarray  # (C, image_dim)
    phash: np.ndarray  # (C,) uint64
    hashed: np.ndarray  # (C,) bool: phash holds a hash of a decoded image
    skipped: list[SkippedItem]
    images_encoded: int = 0
    image_seconds: float = 0.0

    def save(self, path: Path, fingerprint: str) -> None:
        # Written under a temporary name and renamed: a kill mid-write leaves no half chunk that looks finished.
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                fingerprint=np.array(fingerprint),
                ids=np.array(self.ids),
                ok=self.ok,
                text=self.text,
                image=self.image,
                phash=self.phash,
                hashed=self.hashed,
                skipped=np.array(json.dumps([dataclasses.asdict(s) for s in self.skipped])),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> ChunkResult | None:
        """The saved chunk, or None when there is none or it was made from other inputs."""
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["fingerprint"]) != fingerprint:
                    return None
                return cls(
                    ids=[str(i) for i in saved["ids"]],
                    ok=saved["ok"],
                    text=saved["text"],
                    image=saved["image"],
                    phash=saved["phash"],
                    hashed=saved["hashed"],
                    skipped=[SkippedItem(**s) for s in json.loads(str(saved["skipped"]))],
                )
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable saved chunk %s (%s)", path, exc)
            return None


def _decode(item: Item, md5: str | None, preprocess: ClipPreprocessing) -> tuple[np.ndarray, int]:
    image = load_image(Path(str(item.image)), md5=md5)
    return preprocess(image), perceptual_hash(image)


def _check_vector(item: Item, what: str, vector: Sequence[float], dim: int) -> None:
    if len(vector) != dim:
        raise DataError(f"item {item.id!r}: {what} has dimension {len(vector)}, the schema expects {dim}")


def process_chunk(
    items: Sequence[Item], md5: dict[str, str], encoders: Encoders, pool: ThreadPoolExecutor
) -> ChunkResult:
    """Compute one chunk, as both engines do.

    Args:
        items: the chunk's items, in catalog order.
        md5: recorded image md5s by item id (a file that does not match is a skipped item).
        encoders: the loaded encoders; `image` may be None when no item of the run has a picture to encode.
        pool: the threads that decode images.

    Returns:
        The chunk's vectors; an image that cannot be used skips its item (`ChunkResult.skipped`), it is no error.
    """
    n = len(items)
    chunk = ChunkResult(
        ids=[item.id for item in items],
        ok=np.ones(n, dtype=bool),
        text=np.zeros((n, encoders.text_dim), dtype=np.float32),
        image=np.zeros((n, encoders.image_dim), dtype=np.float32),
        phash=np.zeros(n, dtype=np.uint64),
        hashed=np.zeros(n, dtype=bool),
        skipped=[],
    )
    to_embed = [i for i, item in enumerate(items) if item.text_embedding is None and has_text(item)]
    if to_embed:
        chunk.text[to_embed] = encoders.text.encode([item_text(items[i]) for i in to_embed])
    for i, item in enumerate(items):
        if item.text_embedding is not None:
            _check_vector(item, "text_embedding", item.text_embedding, encoders.text_dim)
            chunk.text[i] = item.text_embedding
        if item.image_embedding is not None:
            _check_vector(item, "image_embedding", item.image_embedding, encoders.image_dim)
            chunk.image[i] = item.image_embedding

    to_encode = [i for i, item in enumerate(items) if needs_image(item)]
    if not to_encode:
        return chunk
    if encoders.image is None:
        raise DataError(f"item {items[to_encode[0]].id!r} needs an image encoder (it has no image_embedding)")
    started = time.perf_counter()
    preprocess = encoders.image.preprocess
    futures = [pool.submit(_decode, items[i], md5.get(items[i].id), preprocess) for i in to_encode]
    pixels, rows = [], []
    for i, future in zip(to_encode, futures):
        try:
            pixel_values, phash = future.result()
        except ImageError as exc:
            chunk.ok[i] = False
            chunk.skipped.append(SkippedItem(items[i].id, str(exc.path), exc.problem.value, exc.detail))
            continue
        pixels.append(pixel_values)
        rows.append(i)
        chunk.phash[i], chunk.hashed[i] = phash, True
    if rows:
        chunk.image[rows] = encoders.image.encode_pixels(np.stack(pixels))
    chunk.images_encoded = len(rows)
    chunk.image_seconds = time.perf_counter() - started
    return chunk


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoders a run uses and what the model expects of them: all another process (a Ray actor) needs to
    load, and check, the same encoders as this one."""

    text_dir: Path
    image_dir: Path | None
    schema: FeatureSchema
    images_to_encode: int  # items with a picture to decode; without any, no image encoder is loaded

    def load(self, *, image_threads: int | None = None) -> Encoders:
        """The encoders, checked against the schema; `image_threads` is the CLIP session's intra-op pool (default:
        every core, right for one process alone on the machine, too many for several actors sharing it)."""
        schema = self.schema
        text = TextEncoder(self.text_dir)
        if text.name != schema.text_encoder:
            raise ArtifactError(f"text encoder {text.name} is not the model's {schema.text_encoder}")
        if text.dim != schema.text_dim:
            raise ArtifactError(
                f"text encoder gives {text.dim}-d vectors, the model expects text_dim={schema.text_dim}"
            )
        image: ImageEncoder | None = None
        if self.images_to_encode:
            if self.image_dir is None:
                raise DataError(f"{self.images_to_encode} items have images to encode, but no image encoder was given")
            image = ImageEncoder(self.image_dir, threads=image_threads)
            if image.dim != schema.image_dim:
                raise ArtifactError(
                    f"image encoder {image.name} gives {image.dim}-d vectors, "
                    f"the model expects image_dim={schema.image_dim}"
                    + (" (it was trained on a catalog without images)" if schema.image_dim == 1 else "")
                )
        return Encoders(text=text, image=image, text_dim=schema.text_dim, image_dim=schema.image_dim)


@dataclass(frozen=True)
class ChunkTask:
    """A chunk of items with no usable saved result: what to compute, and where the driver saves it."""

    number: int
    items: list[Item]
    md5: dict[str, str]  # recorded image md5s of these items only (a Ray task carries no more than it needs)
    fingerprint: str
    path: Path


class ChunkRunner(Protocol):
    """An engine: computes the given chunks with `process_chunk` and yields each with its task as it is done, in
    any order. It never saves: the caller does, so that every engine resumes from the same files."""

    def __call__(
        self, tasks: Sequence[ChunkTask], spec: EncoderSpec, encoders: Encoders
    ) -> Generator[tuple[ChunkTask, ChunkResult], None, None]: ...
