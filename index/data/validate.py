"""Check a dataset in the user data format (docs/data.md) and report every problem with file, line and field.

Run as `python -m index.data.validate DIR` (or `make validate DATA=DIR`). DIR holds `items` (.jsonl or .parquet) or an
image `manifest.csv`, and optionally `queries`, `judgments` (.jsonl or .parquet) or TREC qrels (`qrels.txt`,
`judgments.qrels`). Unlike the readers, which stop at the first problem, the validator reads everything and lists
every problem it finds; it exits 1 when there is an error, 0 when there are only warnings or nothing. The summary
counts the items with each modality (text, image, attributes).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from index.cli_logging import configure_cli_logging
from index.data.readers import (
    Problem,
    find_data_file,
    find_qrels,
    scan_image_manifest,
    scan_items,
    scan_judgments,
    scan_queries,
)
from index.data.records import IMAGE_DIM, IMAGE_MANIFEST, TEXT_DIM, Modality, Severity, VectorDims

__all__ = ["Problem", "Report", "Severity", "modality_count", "validate"]

_WITH = {Modality.TEXT: "text", Modality.IMAGE: "an image", Modality.ATTRIBUTES: "attributes"}


def modality_count(modality: Modality) -> str:
    """The `Report.counts` key of the number of items with `modality`: items_with_text, _image, _attributes."""
    return f"items_with_{modality}"


@dataclass
class Report:
    """Every problem found, and what was read. It is the scans' problem sink: it collects, never stops.

    `counts` has `items`, `items_with_text`, `items_with_image` and `items_with_attributes` (see `modality_count`)
    when there is an items file or manifest, `queries` and `judgments` when there are such files."""

    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """What was read: `read 6 items (6 with text, 0 with an image, 2 with attributes), 2 queries`."""
        parts = []
        if "items" in self.counts:
            with_ = ", ".join(f"{self.counts.get(modality_count(m), 0)} with {_WITH[m]}" for m in Modality)
            parts.append(f"{self.counts['items']} items ({with_})")
        parts += [f"{self.counts[name]} {name}" for name in ("queries", "judgments") if name in self.counts]
        return f"read {', '.join(parts) or 'nothing'}"


def _exists_beside(path: Path, check: bool) -> Callable[[str], bool] | None:
    return (lambda name: (path.parent / name).is_file()) if check else None


def validate(data: Path, *, text_dim: int = TEXT_DIM, image_dim: int = IMAGE_DIM, check_images: bool = True) -> Report:
    """Check every file of the dataset at `data` (a directory); returns all problems found."""
    data = Path(data)
    report = Report()
    if not data.is_dir():
        report.problems.append(Problem(data, None, None, "not a dataset directory"))
        return report
    items_file = find_data_file(data, "items")
    item_ids: set[str] | None = None
    with_modality: dict[Modality, int] = {}
    if items_file is not None:
        scanned = scan_items(
            items_file,
            report,
            dims=VectorDims(text_dim, image_dim),
            image_exists=_exists_beside(items_file, check_images),
        )
        item_ids, with_modality = scanned.keys, scanned.modalities
        if not item_ids and not report.errors:
            report.add(Problem(items_file, None, None, "no items"))
    elif (data / IMAGE_MANIFEST).exists():
        manifest = data / IMAGE_MANIFEST
        item_ids = scan_image_manifest(manifest, report, image_exists=_exists_beside(manifest, check_images)).keys
        with_modality = {Modality.IMAGE: len(item_ids)}  # a manifest row is a picture and nothing else
    else:
        report.add(Problem(data, None, None, f"no items.jsonl, items.parquet or {IMAGE_MANIFEST}"))
    if item_ids is not None:
        report.counts["items"] = len(item_ids)
        report.counts.update({modality_count(m): with_modality.get(m, 0) for m in Modality})
    queries_file = find_data_file(data, "queries")
    query_ids: set[str] | None = None
    if queries_file is not None:
        query_ids = scan_queries(queries_file, report).keys
        report.counts["queries"] = len(query_ids)
    judgments_file = find_data_file(data, "judgments") or find_qrels(data)
    if judgments_file is not None:
        judged = scan_judgments(judgments_file, report, query_ids=query_ids, item_ids=item_ids)
        report.counts["judgments"] = len(judged.keys)
        if queries_file is None:
            report.add(Problem(data, None, None, "judgments without a queries file", Severity.WARNING))
    return report


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _dims_from_model(model_dir: Path) -> tuple[int, int]:
    from index.runtime.exported_model import ModelCard

    schema = ModelCard.load(model_dir).schema
    return schema.text_dim, schema.image_dim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m index.data.validate", description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="dataset directory")
    parser.add_argument("--model", type=Path, default=None, help="take the vector dimensions from this model card")
    parser.add_argument("--text-dim", type=int, default=TEXT_DIM)
    parser.add_argument("--image-dim", type=int, default=IMAGE_DIM)
    parser.add_argument("--no-image-check", action="store_true", help="do not check that image files exist")
    parser.add_argument("--max-problems", type=int, default=200, help="print at most this many (all are counted)")
    args = parser.parse_args(argv)
    configure_cli_logging()
    text_dim, image_dim = args.text_dim, args.image_dim
    if args.model is not None:
        try:
            text_dim, image_dim = _dims_from_model(args.model)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    report = validate(args.data, text_dim=text_dim, image_dim=image_dim, check_images=not args.no_image_check)
    for problem in report.problems[: args.max_problems]:
        print(problem)
    if len(report.problems) > args.max_problems:
        print(f"... and {len(report.problems) - args.max_problems} more")
    errors, warnings = len(report.errors), len(report.warnings)
    print(f"{args.data}: {_plural(errors, 'error')}, {_plural(warnings, 'warning')}; {report.summary()}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
