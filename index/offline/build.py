"""Build an index bundle from a catalog and an exported model: `python -m index.offline.build` (or `make index`).

See `index.offline.bundle_writer` for what the bundle holds and how it is made.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from index.cli_logging import configure_cli_logging
from index.data.records import DataError
from index.offline.bundle_writer import build_bundle, reproject_bundle
from index.runtime.faiss_index import IndexKind
from index.runtime.files import ArtifactError
from index.runtime.lexical import analysis_choices

log = logging.getLogger("index.offline.build")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m index.offline.build", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="catalog dir or items.jsonl")
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("artifacts"),
        help="directory with the exported ranker; one without model_card.json (e.g. `none`) builds a zero-shot bundle",
    )
    parser.add_argument("--encoder", type=Path, default=Path("artifacts/encoders/minilm"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/bundle"))
    parser.add_argument("--index", choices=["auto", *(k.value for k in IndexKind)], default="auto")
    parser.add_argument(
        "--analysis",
        choices=analysis_choices(),
        metavar="{none,LANGUAGE}",
        default=None,
        help="how BM25 analyses text: none, or a Snowball language (stop words and stems), e.g. english (default: "
        "the model's; none for a zero-shot bundle)",
    )
    parser.add_argument(
        "--from-bundle",
        type=Path,
        default=None,
        help="reuse this bundle's features; recompute only what the new model makes (candidate encodings, index)",
    )
    args = parser.parse_args(argv)
    if args.from_bundle is not None and args.analysis is not None:
        parser.error("--analysis does not go with --from-bundle, which keeps that bundle's BM25 index")
    configure_cli_logging()
    try:
        if args.from_bundle is not None:
            bundle = reproject_bundle(args.from_bundle, args.model, args.out)
        else:
            bundle = build_bundle(args.data, args.model, args.encoder, args.out, args.index, args.analysis)
    except (DataError, ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "bundle %s: %d items at %s (model %s)",
        bundle.version,
        bundle.size,
        bundle.path,
        bundle.model_version or "none: zero-shot",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
