"""The command line of catalog ingestion: `python -m index.offline.ingest` (or `make ingest`), also
`python -m index.cli.ingest`.

Before it ingests (index.offline.ingest), it exports the CLIP image tower from a local checkpoint (`--clip`, or
$RANK_CLIP_DIR) when no image encoder is there yet. That export is index.export's, built on index.offline's image
pipeline; so it is called from here, above both, and the ingestion library never imports the exporter.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import index.offline.ingest as ingestion
from index.cli_logging import configure_cli_logging
from index.data.records import DataError
from index.offline.ingest import DEFAULT_CHUNK, DEFAULT_DUP_DISTANCE, Engine, EngineUnavailable, IngestConfig, ingest
from index.runtime.faiss_index import IndexKind
from index.runtime.files import ArtifactError
from index.runtime.lexical import analysis_choices

log = logging.getLogger(__name__)

CLIP_DIR_ENV = "RANK_CLIP_DIR"  # index.export.image_encoder's too, not imported from there: that would load torch
LOCAL_WORKERS = min(4, os.cpu_count() or 1)  # the defaults for --workers: decoding threads
RAY_WORKERS = 2  # or actors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m index.offline.ingest", description=(ingestion.__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset dir, items .jsonl/.parquet, or manifest.csv")
    parser.add_argument("--model", type=Path, default=IngestConfig.model_dir, help="directory with the exported ranker")
    parser.add_argument("--encoder", type=Path, default=IngestConfig.text_encoder_dir, help="ONNX text encoder")
    parser.add_argument("--image-encoder", type=Path, default=IngestConfig.image_encoder_dir, help="ONNX image encoder")
    parser.add_argument(
        "--clip",
        type=Path,
        default=os.environ.get(CLIP_DIR_ENV) or None,
        help=f"local CLIPModel directory to export a missing image encoder from (default: ${CLIP_DIR_ENV})",
    )
    parser.add_argument("--out", type=Path, default=IngestConfig.out)
    parser.add_argument("--work-dir", type=Path, default=None, help="where chunks are saved (default: <out>.work)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="items per saved chunk")
    parser.add_argument(
        "--engine",
        type=Engine,
        choices=list(Engine),
        default=Engine.LOCAL,
        help="local: this process; ray: a Ray Data actor pool (the `ray` extra; RAY_ADDRESS joins a running cluster)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"decoding threads (local engine, default {LOCAL_WORKERS}) or actors (ray engine, default {RAY_WORKERS})",
    )
    parser.add_argument("--dup-distance", type=int, default=DEFAULT_DUP_DISTANCE, help="max phash bits that differ")
    parser.add_argument("--index", choices=["auto", *(k.value for k in IndexKind)], default="auto")
    parser.add_argument("--keep-work", action="store_true", help="keep the saved chunks after success")
    parser.add_argument(
        "--analysis",
        choices=analysis_choices(),
        metavar="{none,LANGUAGE}",
        default=None,
        help="how BM25 analyses text: must be the model's, which is the default",
    )
    args = parser.parse_args(argv)
    configure_cli_logging()
    default_workers = RAY_WORKERS if args.engine is Engine.RAY else LOCAL_WORKERS
    workers = default_workers if args.workers is None else args.workers
    cfg = IngestConfig(
        data=args.data,
        model_dir=args.model,
        text_encoder_dir=args.encoder,
        image_encoder_dir=args.image_encoder,
        out=args.out,
        work_dir=args.work_dir,
        chunk_size=args.chunk_size,
        workers=workers,
        engine=args.engine,
        dup_max_distance=args.dup_distance,
        index_kind=args.index,
        keep_work=args.keep_work,
        analysis=args.analysis,
    )
    try:
        if args.clip is not None and not (args.image_encoder / "encoder.json").exists():
            from index.export.image_encoder import export_image_encoder

            export_image_encoder(args.clip, args.image_encoder)
        report = ingest(cfg)
    except KeyboardInterrupt:
        print(
            f"error: interrupted; finished chunks are in {cfg.resolved_work_dir}, run the same command to continue",
            file=sys.stderr,
        )
        return 130
    except (EngineUnavailable, DataError, ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "bundle %s: %d of %d items at %s; %d skipped %s; %d near-duplicate pairs; %d images at %.1f/s; %.1fs in all",
        report.bundle_version,
        report.items_indexed,
        report.items_read,
        report.bundle,
        len(report.skipped),
        report.skipped_by_problem or "",
        len(report.near_duplicates),
        report.images_encoded,
        report.images_per_second,
        report.seconds,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
