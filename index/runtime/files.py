"""Small file helpers shared by every artifact writer and loader: checksums, JSON, and the artifact error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


class ArtifactError(ValueError):
    """An artifact that is missing, corrupt or does not match its partner; the message says which and why."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def verify_files(directory: Path, expected: dict[str, str], what: str) -> None:
    """Raise ArtifactError unless every file exists and has the recorded sha256."""
    for name, digest in expected.items():
        path = directory / name
        if not path.exists():
            raise ArtifactError(f"{what}: file {path} is missing")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{what}: checksum mismatch for {path} (file changed or corrupt)")
