"""The one normalisation of query text: the service applies it before it encodes, caches or logs a query, and
training applies it to a catalog's queries to find them in the service's impression log."""

from __future__ import annotations

import unicodedata


def normalize_text(text: str) -> str:
    """NFKC-normalise, turn control characters into spaces and collapse whitespace (may return "")."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return " ".join(text.split())
