"""Ingestion engines side by side: `python -m loadtests.bench.ray_ingest` (needs the `ray` extra).

Ingests the Pexels photos (default: all 500, read in place from ../shared) with the single-process engine, then with
Ray Data at each `--ray-workers` pool size, and prints a markdown table: wall seconds and items per second of each
run, and whether its bundle is byte-identical to the single-process one (every file's sha256; the manifest's without
its `created` time; not ingest_report.json, which holds timings). The image tower is the real ViT-B/32 architecture
with random weights, as in loadtests/bench/images.py (no CLIP weights exist here, and a forward pass costs the same
whatever the weights): `--tower tiny` for the tests' 2-layer tower.

Ray is started once, on all of this machine's CPUs, before the Ray runs and timed apart: the Ray rows count
starting the actors and loading their encoders, not starting Ray, which a CLI run pays once more.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from index.cli_logging import configure_cli_logging
from index.offline.ingest import REPORT_FILE, Engine, IngestConfig, ingest
from index.runtime.bundle import MANIFEST_FILE
from loadtests.bench.images import DEFAULT_IMAGES

log = logging.getLogger(__name__)


def bundle_digests(bundle: Path) -> dict[str, str]:
    """sha256 of every file of a bundle, the manifest's without its `created` time, the ingest report left out."""
    digests = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        name = str(path.relative_to(bundle))
        if name == REPORT_FILE:
            continue
        data = path.read_bytes()
        if name == MANIFEST_FILE:
            manifest = json.loads(data)
            manifest.pop("created")
            data = json.dumps(manifest, sort_keys=True).encode()
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


@dataclass(frozen=True)
class Run:
    """One ingestion of the catalog."""

    engine: str
    workers: int
    items: int
    seconds: float
    identical: bool | None  # to the single-process bundle; None for that run itself


def _ingest(cfg: IngestConfig) -> tuple[float, int]:
    started = time.perf_counter()
    report = ingest(cfg)
    return time.perf_counter() - started, report.items_indexed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.ray_ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of photos with manifest.csv")
    parser.add_argument("--model", type=Path, default=Path("artifacts"), help="directory with the exported ranker")
    parser.add_argument("--encoder", type=Path, default=Path("artifacts/encoders/minilm"), help="ONNX MiniLM")
    parser.add_argument("--tower", choices=["vit-b32", "tiny"], default="vit-b32", help="CLIP image tower")
    parser.add_argument("--chunk-size", type=int, default=64, help="items per chunk (a pool's unit of work)")
    parser.add_argument("--ray-workers", default="1,2", help="comma-separated actor pool sizes")
    args = parser.parse_args(argv)
    configure_cli_logging()
    logging.getLogger("index.export.image_encoder").setLevel(logging.WARNING)
    pools = [int(w) for w in args.ray_workers.split(",") if w.strip()]
    if not (args.images / "manifest.csv").exists():
        print(f"error: {args.images} has no manifest.csv (the Pexels photos live in ../shared)", file=sys.stderr)
        return 2
    try:
        import ray
    except ImportError:
        print("error: install the ray extra: pip install -e '.[ray]'", file=sys.stderr)
        return 2

    from index.export.image_encoder import export_image_encoder
    from loadtests.bench.images import random_clip

    cores = os.cpu_count() or 1
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        tower = export_image_encoder(random_clip(args.tower, root), root / f"onnx-{args.tower}")

        def config(name: str, engine: Engine, workers: int) -> IngestConfig:
            return IngestConfig(
                data=args.images,
                model_dir=args.model,
                text_encoder_dir=args.encoder,
                image_encoder_dir=tower,
                out=root / name,
                chunk_size=args.chunk_size,
                workers=workers,
                engine=engine,
            )

        # The single-process engine as loadtests/bench/images.py runs it: a decoding thread per core.
        seconds, items = _ingest(config("local", Engine.LOCAL, cores))
        reference = bundle_digests(root / "local")
        runs.append(Run("single process", cores, items, seconds, None))

        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray_start = time.perf_counter() - started
        try:
            for workers in pools:
                name = f"ray-{workers}"
                seconds, items = _ingest(config(name, Engine.RAY, workers))
                runs.append(Run("Ray Data", workers, items, seconds, bundle_digests(root / name) == reference))
        finally:
            ray.shutdown()

    load = os.getloadavg()
    print(
        f"{args.images}: {runs[0].items} photos, {args.tower} tower (random weights), chunks of {args.chunk_size}, "
        f"{cores} CPU cores; Ray start {ray_start:.1f} s (not in the rows); load average after "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    print("| engine | workers | wall s | items/s | bundle identical to single process |")
    print("| --- | --- | --- | --- | --- |")
    for run in runs:
        unit = "threads" if run.identical is None else "actors"
        same = "(reference)" if run.identical is None else ("yes, every file" if run.identical else "**NO**")
        print(f"| {run.engine} | {run.workers} {unit} | {run.seconds:.1f} | {run.items / run.seconds:.1f} | {same} |")
    return 0 if all(run.identical is not False for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
