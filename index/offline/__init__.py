"""Offline work on a catalog, never imported by the service: featurisation, the bundle writer (CLI
`python -m index.offline.build`), resumable ingestion (`python -m index.offline.ingest`), image decoding and the
CLIP image encoder (batch encoding at index time needs PIL, which the service image does not carry)."""
