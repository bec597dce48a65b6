"""A thread-safe least-recently-used map of strings to vectors: the service's query caches (MiniLM embeddings in
`TextEncoder`, and each engine's query-tower projections) are looked up on more than one thread."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class VectorCache:
    """At most `size` vectors by key, the least recently used evicted first; size 0 remembers nothing."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        """The vector for `key` (now the most recently used), or None."""
        with self._lock:
            vector = self._items.get(key)
            if vector is not None:
                self._items.move_to_end(key)
            return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[key] = vector
            self._items.move_to_end(key)
            if len(self._items) > self._size:
                self._items.popitem(last=False)
