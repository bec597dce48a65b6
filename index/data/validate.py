"""Check a dataset in the user data format (docs/data.md) and report every problem with file, line and field.

Run as `python -m index.data.validate DIR` (or `make validate DATA=DIR`). DIR holds `items` (.jsonl or .parquet) or an
image `manifest.csv`, and optionally `queries`, `judgments` (.jsonl or .parquet) or TREC qrels (`qrels.txt`,
`judgments.qrels`). Unlike the readers, which stop at the first problem, the validator reads everything and lists
every problem it finds; it exits 1 when there is an error, 0 when there are only warnings or nothing. The summary
counts the items with each modality (text, image, attributes).

Past the format, it gives the verdict training and indexing will give (`index.data.verdict`): with the feature
schema learnt from the catalog as training learns it (or a trained model's, `--model`), the items skipped, the
judgments skipped, the queries left out, each counted in one warning that names the first few with file and line.

This module is the library (`validate`), which takes a model's schema and a text measure as arguments; its command
line, which loads them from a model directory and an exported encoder, is index/cli/validate.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from index.data.readers import Problem, find_data_file
from index.data.records import IMAGE_DIM, IMAGE_MANIFEST, TEXT_DIM, DataError, Modality, Severity, VectorDims
from index.data.verdict import TextMeasure, modality_warnings, read_catalog
from model.schema import FeatureSchema

__all__ = ["Problem", "Report", "Severity", "modality_count", "validate"]

_WITH = {Modality.TEXT: "text", Modality.IMAGE: "an image", Modality.ATTRIBUTES: "attributes"}


def modality_count(modality: Modality) -> str:
    """The `Report.counts` key of the number of items with `modality`: items_with_text, _image, _attributes."""
    return f"items_with_{modality}"


@dataclass
class Report:
    """Every problem found, and what was read. It is the scans' problem sink: it collects, never stops.

    `counts` has `items`, `items_with_text`, `items_with_image` and `items_with_attributes` (see `modality_count`)
    when there is an items file or manifest, `queries` and `judgments` when there are such files, and for an items
    file `index.data.verdict.Screened.counts` (what training will keep and skip)."""

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


def validate(
    data: Path,
    *,
    text_dim: int = TEXT_DIM,
    image_dim: int = IMAGE_DIM,
    check_images: bool = True,
    schema: FeatureSchema | None = None,
    text_measure: TextMeasure | None = None,
) -> Report:
    """Check every file of the dataset at `data` (a directory); returns all problems found, format problems first,
    then the verdict on each record. `schema` is a trained model's (None: learnt from the catalog, as training
    learns it); `text_measure` (the text encoder) names the texts it will truncate."""
    data = Path(data)
    report = Report()
    if not data.is_dir():
        report.problems.append(Problem(data, None, None, "not a dataset directory"))
        return report
    items_file = find_data_file(data, "items") or data / IMAGE_MANIFEST
    if not items_file.exists():
        report.add(Problem(data, None, None, f"no items.jsonl, items.parquet or {IMAGE_MANIFEST}"))
        return report
    try:
        screened = read_catalog(
            data,
            schema=schema,
            text_measure=text_measure,
            sink=report,
            dims=VectorDims(text_dim, image_dim),
            image_exists=_exists_beside(items_file, check_images),
        )
    except DataError as exc:  # nothing left to rank on: one sentence
        report.add(Problem(items_file, None, None, str(exc).removeprefix(f"{items_file}: ")))
        return report
    if not screened.items_read and not report.errors:
        report.add(Problem(items_file, None, None, "no items"))
    report.problems += [defect.problem() for defect in screened.defects] + modality_warnings(screened)
    report.counts["items"] = len(screened.item_lines)  # every item that named an id, well-formed or not
    report.counts.update({modality_count(m): screened.modalities.get(m, 0) for m in Modality})
    if find_data_file(data, "queries") is not None:
        report.counts["queries"] = len(screened.queries)
    if screened.judgments_read is not None:
        report.counts["judgments"] = screened.judgments_read
        if find_data_file(data, "queries") is None:
            report.add(Problem(data, None, None, "judgments without a queries file", Severity.WARNING))
    report.counts.update(screened.counts)
    return report


if __name__ == "__main__":
    # The command line lives in index/cli/validate.py: `--model` and `--encoder` load a model card and the text
    # encoder (index.runtime), which the data format does not import. `python -m index.data.validate` keeps its name.
    from index.cli.validate import main

    sys.exit(main())
