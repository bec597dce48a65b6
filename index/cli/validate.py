"""The command line of the data format's validator: `python -m index.data.validate DIR` (or `make validate`), also
`python -m index.cli.validate DIR`.

`--model` judges with a trained model's feature schema (its model card, index.runtime) and `--encoder` counts the
texts the exported MiniLM will truncate (index.runtime's TextEncoder). The checks themselves
(index.data.validate.validate) take both as arguments: the data format imports nothing of the runtime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import index.data.validate as format_checks
from index.cli_logging import configure_cli_logging
from index.data.records import IMAGE_DIM, TEXT_DIM
from index.data.validate import validate
from index.data.verdict import TextMeasure
from model.schema import FeatureSchema


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# The runtime is imported only when --model or an exported encoder asks for it: validating a dataset alone starts
# without ONNX Runtime.
def _model_schema(model_dir: Path) -> FeatureSchema:
    from index.runtime.exported_model import ModelCard

    return ModelCard.load(model_dir).schema


def _text_measure(encoder_dir: Path) -> TextMeasure | None:
    """The text encoder when it has been exported (`make encoder`): it counts the texts it will truncate."""
    if not (encoder_dir / "encoder.json").exists():
        return None
    from index.runtime.text_encoder import TextEncoder

    return TextEncoder(encoder_dir)


def main(argv: list[str] | None = None) -> int:
    description = (format_checks.__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m index.data.validate", description=description)
    parser.add_argument("data", type=Path, help="dataset directory")
    parser.add_argument(
        "--model", type=Path, default=None, help="judge with this model's feature schema (default: learnt)"
    )
    parser.add_argument(
        "--encoder", type=Path, default=Path("artifacts/encoders/minilm"), help="count texts this encoder truncates"
    )
    parser.add_argument("--text-dim", type=int, default=TEXT_DIM)
    parser.add_argument("--image-dim", type=int, default=IMAGE_DIM)
    parser.add_argument("--no-image-check", action="store_true", help="do not check that image files exist")
    parser.add_argument("--max-problems", type=int, default=200, help="print at most this many (all are counted)")
    args = parser.parse_args(argv)
    configure_cli_logging()
    text_dim, image_dim = args.text_dim, args.image_dim
    schema = None
    try:
        if args.model is not None:
            schema = _model_schema(args.model)
            text_dim, image_dim = schema.text_dim, schema.image_dim
        measure = _text_measure(args.encoder)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if measure is None:
        print(f"note: no text encoder at {args.encoder} (`make encoder`): long texts are not counted")
    report = validate(
        args.data,
        text_dim=text_dim,
        image_dim=image_dim,
        check_images=not args.no_image_check,
        schema=schema,
        text_measure=measure,
    )
    for problem in report.problems[: args.max_problems]:
        print(problem)
    if len(report.problems) > args.max_problems:
        print(f"... and {len(report.problems) - args.max_problems} more")
    errors, warnings = len(report.errors), len(report.warnings)
    print(f"{args.data}: {_plural(errors, 'error')}, {_plural(warnings, 'warning')}; {report.summary()}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
