"""A disk cache of catalog text embeddings, so that training, export, the index build and the evaluation of one
catalog encode its texts once.

MiniLM over long texts is the slowest step of every offline command on a CPU (CISI's 1,460 abstracts: about 90 s
here), and each command used to repeat it. The cache key is the encoder's model file checksum, its truncation limit
and every text, in order: any change to either is a miss. Set FUSION_RANK_CACHE to move the cache (default
build/cache), or to `off` to disable it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from index.runtime.text_encoder import MAX_TOKENS, TextEncoder

log = logging.getLogger(__name__)

CACHE_ENV = "FUSION_RANK_CACHE"
DEFAULT_CACHE = Path("build/cache")


def cache_dir() -> Path | None:
    """Where embeddings are cached, or None when FUSION_RANK_CACHE=off."""
    value = os.environ.get(CACHE_ENV, str(DEFAULT_CACHE))
    return None if value.lower() in ("off", "0", "") else Path(value)


def _key(encoder: TextEncoder, texts: list[str]) -> str:
    digest = hashlib.sha256()
    model_file = "model.onnx" if encoder.variant == "fp32" else "model.int8.onnx"
    digest.update(f"{encoder.name}\0{encoder.info.get('files', {}).get(model_file)}\0{MAX_TOKENS}".encode())
    for text in texts:
        digest.update(b"\0" + text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


def encode_texts(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """`encoder.encode(texts)`, from the cache when these texts were encoded by this encoder before."""
    directory = cache_dir()
    if directory is None or not texts:
        return encoder.encode(texts)
    path = directory / "text" / f"{_key(encoder, texts)}.npy"
    if path.exists():
        try:
            cached = np.load(path)
            if cached.shape == (len(texts), encoder.dim):
                log.info("%d text embeddings from the cache %s", len(texts), path)
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache file is a miss, rewritten below
    vectors = encoder.encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.replace(path)  # atomic: a concurrent reader never sees half a file
    return vectors
