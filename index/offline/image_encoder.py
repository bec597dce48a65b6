"""Image encoder at index time: CLIP's image tower as an ONNX graph run by ONNX Runtime (no torch).

The graph (made by `index.export.image_encoder` from a local transformers `CLIPModel` directory) takes pixels made
by CLIP's own preprocessing, (B, 3, H, W), and returns `CLIPModel.get_image_features(...).pooler_output`, L2-normalised:
the unit vectors CLIP compares by cosine, (B, projection_dim). The directory holds `model.onnx`,
`preprocessor_config.json` and `encoder.json` (name, dimension, architecture, sha256 per file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from index.offline.images import ClipPreprocessing
from index.runtime.files import ArtifactError, verify_files
from index.runtime.ort_session import make_session

ENCODER_INFO_FILE = "encoder.json"
MODEL_FILE = "model.onnx"
PREPROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_BATCH = 32


class ImageEncoder:
    """Encodes RGB images to unit-norm CLIP image embeddings with ONNX Runtime."""

    def __init__(self, model_dir: Path, *, threads: int | None = None, providers: list[str] | None = None) -> None:
        model_dir = Path(model_dir)
        info_path = model_dir / ENCODER_INFO_FILE
        if not info_path.exists():
            raise FileNotFoundError(
                f"{model_dir} is not an image-encoder directory (no {ENCODER_INFO_FILE}); "
                "run `make image-encoder CLIP=/path/to/local/clip`"
            )
        self.info = json.loads(info_path.read_text())
        verify_files(model_dir, self.info["files"], f"image encoder {model_dir}")
        self.name: str = self.info["name"]
        self.dim: int = int(self.info["dim"])
        self.preprocess = ClipPreprocessing.from_file(model_dir / PREPROCESSOR_FILE)
        # Batch encoding at index time is throughput work: every core helps, unlike the request path's small graphs.
        self.session = make_session(model_dir / MODEL_FILE, providers=providers, threads=threads or os.cpu_count() or 1)
        expected = (3, *self.preprocess.shape)
        shape = tuple(self.session.get_inputs()[0].shape[1:])
        if shape != expected:
            raise ArtifactError(
                f"image encoder {model_dir}: graph takes pixels {shape}, preprocessing makes {expected}"
            )

    @property
    def version(self) -> str:
        """Short id of the exported graph: bundles record which encoder made their image vectors."""
        return str(self.info["files"][MODEL_FILE])[:12]

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "dim": self.dim,
            "architecture": self.info.get("architecture"),
        }

    def encode_pixels(self, pixels: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """(N, dim) float32 unit vectors for preprocessed pixels (N, 3, H, W)."""
        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        for start in range(0, len(pixels), batch_size):
            chunk = np.ascontiguousarray(pixels[start : start + batch_size], dtype=np.float32)
            out[start : start + len(chunk)] = self.session.run(None, {"pixel_values": chunk})[0]
        return out

    def encode(self, images: Sequence[Image.Image], batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """(N, dim) float32 unit vectors for decoded RGB images, in input order."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out[start : start + len(chunk)] = self.encode_pixels(self.preprocess.batch(chunk), batch_size)
        return out
