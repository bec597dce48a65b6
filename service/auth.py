"""API keys for the data plane: with `RANK_API_KEYS` (or `RANK_API_KEYS_FILE`) set, /rank, /rerank and the
Cohere, Jina and TEI routes want `Authorization: Bearer <key>`: 401 without one, 403 with a wrong one, in the one
error body every client's error handling reads (service.errors.error_response). Without keys, nothing is checked,
as before. Health, metrics and docs stay open; /admin/* keeps its own token.

A key is given as `id:key` (the id names it in metrics, e.g. a team) or as a bare key, whose id is then the first
8 hex digits of its SHA-256. Keys are compared as SHA-256 digests with `hmac.compare_digest` against every
configured key, so a comparison takes the same time whichever key matches, and a key is never logged or exported,
only its id.

With `RANK_KEY_RATE_LIMIT` set, each key id may make that many requests a second on average, in bursts of up to
`RANK_KEY_RATE_BURST` (`KeyQuotas`, a token bucket per id); a request over it is refused with 429 and a
`Retry-After` that says when the next one will be taken.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MIN_KEY_LENGTH = 16


class KeyDenied(PermissionError):
    """A data-plane request without a key (401) or with a wrong one (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, as (digest, id) pairs."""

    keys: tuple[tuple[bytes, str], ...]

    @classmethod
    def parse(cls, listed: str | None, path: Path | None) -> ApiKeys | None:
        """Keys from a comma-separated list and from a file (one per line; blank lines and `#` comments skipped);
        None when neither gives any. Raises ValueError, naming the entry, for a short key or a repeated id."""
        entries = [e.strip() for e in (listed or "").split(",") if e.strip()]
        if path is not None:
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read the API key file {path}: {exc.strerror}") from None
            entries += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        keys: list[tuple[bytes, str]] = []
        for number, entry in enumerate(entries, start=1):
            key_id, _, key = entry.rpartition(":")
            if len(key) < MIN_KEY_LENGTH:
                raise ValueError(
                    f"API key {number} (id {key_id or 'none'}) is shorter than {MIN_KEY_LENGTH} characters"
                )
            key_id = key_id or hashlib.sha256(key.encode()).hexdigest()[:8]
            if key_id in {known for _, known in keys}:
                raise ValueError(f"API key id {key_id!r} is given twice")
            keys.append((_digest(key), key_id))
        return cls(tuple(keys)) if keys else None

    def identify(self, authorization: str) -> str:
        """The id of the key in an `Authorization` header's value; raises KeyDenied."""
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise KeyDenied(401, "authorization: this service wants an API key, as 'Authorization: Bearer <key>'")
        digest = _digest(key.strip())
        found = None
        for known, key_id in self.keys:  # every key, always: the time does not say which one matched
            if hmac.compare_digest(digest, known):
                found = key_id
        if found is None:
            raise KeyDenied(403, "authorization: the API key is not valid")
        return found


def is_bearer(authorization: str, token: str | None) -> bool:
    """Whether an `Authorization` value is `Bearer <token>`, compared in constant time (False without a token)."""
    return token is not None and hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())


class QuotaExceeded(PermissionError):
    """A key id's requests came faster than its quota (429, with `retry_after_s`)."""

    def __init__(self, key_id: str, rate: float, retry_after_s: float) -> None:
        super().__init__(
            f"authorization: the API key {key_id!r} is over its quota of {rate:g} requests/s; "
            f"retry after {retry_after_s:.2f} s"
        )
        self.retry_after_s = retry_after_s


class KeyQuotas:
    """A token bucket per key id: `rate` requests a second on average, up to `burst` at once. Thread-safe (HTTP
    and gRPC requests are admitted on different threads)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when they were counted)
        self._lock = threading.Lock()

    def take(self, key_id: str) -> None:
        """Take one request from `key_id`'s bucket; QuotaExceeded when it is empty."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                raise QuotaExceeded(key_id, self.rate, (1.0 - tokens) / self.rate)
            self._buckets[key_id] = (tokens - 1.0, now)


def retry_after_header(seconds: float) -> str:
    """HTTP's Retry-After is whole seconds: rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
