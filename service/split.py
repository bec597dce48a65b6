"""Stable traffic splits: a request key (the X-Request-Key header, else the query text) always falls on the same
side of a share, so one user keeps meeting one model and a replayed request is treated alike."""

from __future__ import annotations

import hashlib


def in_share(key: str, share: float) -> bool:
    """Whether `key` falls within `share` percent (0..100), in steps of 0.01%."""
    bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 10_000
    return bucket < share * 100
