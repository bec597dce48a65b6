"""A faster query encoder for the CPU: all-MiniLM-L6-v2's first layers, distilled on a catalog's own texts to
reproduce the full model's embeddings, and served only where the rankings hold.

    python -m training.student --data DIR [--layers 3] [--epochs 10] [--out artifacts/encoders/student]

Three steps:

1. **Distil.** The student starts as MiniLM cut to its first `layers` layers (the same embeddings, tokenizer and
   pooling) and learns to give each text the teacher's embedding (loss: 1 - cosine), on the catalog's item texts
   and the dataset's queries outside the test split. Catalog texts stay the teacher's: the bundle is not rebuilt,
   so the student must land in the teacher's space.
2. **Export** it as an encoder directory like MiniLM's (fp32 graph checked against PyTorch, int8 variant), whose
   encoder.json says `student` (the teacher, the layers, the training texts, the held-out cosine).
3. **Gate.** The held-out (test split) queries go through the service's real request path in this process, once
   with MiniLM and once with the student as the query encoder, and the student passes when its nDCG@10 is at most
   `MAX_DROP` below MiniLM's. The verdict is written into its encoder.json with the model it was measured with;
   the service (`RANK_QUERY_ENCODER_DIR`) refuses a student that failed, or that passed with another model.

Exit codes: 0 passed, 3 distilled but failed the gate (the directory is written, with the verdict), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.cli_logging import configure_cli_logging
from index.data.records import DataError
from index.export.text_encoder import MeanPooledEncoder, load_minilm, minilm_source, write_encoder
from index.runtime.text_encoder import MAX_TOKENS, TextEncoder
from training.evaluate.data import EvalData, load_eval_data
from training.evaluate.errors import EvaluateError

log = logging.getLogger(__name__)

MAX_DROP = 0.005  # the most held-out served nDCG@10 a student may lose against MiniLM
STUDENT_DIR = Path("artifacts/encoders/student")
GATE_FAILED = 3


@dataclass(frozen=True)
class StudentConfig:
    """How the student is made. Three layers passed the gate on SYNTHETIC (0.9411 against MiniLM's 0.9451) at 0.83
    against 2.09 ms per query (BENCHMARKS.md, "A distilled query encoder")."""

    layers: int = 3
    epochs: int = 10
    learning_rate: float = 2e-4
    batch_size: int = 32
    seed: int = 0


def training_texts(data: EvalData, held_out: set[str]) -> list[str]:
    """The catalog's texts and every query outside `held_out`: what the student learns to embed."""
    return [item.full_text for item in data.items] + [q.text for q in data.queries if q.id not in held_out]


def distil(texts: list[str], teacher: TextEncoder, config: StudentConfig) -> MeanPooledEncoder:
    """A student trained to give each of `texts` the teacher's embedding; one progress line per epoch."""
    from transformers import AutoTokenizer

    torch.manual_seed(config.seed)
    target = torch.from_numpy(teacher.encode(texts))
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_source()))
    student = load_minilm(config.layers).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate, weight_decay=0.01)
    # Batches of similar lengths, so that padding costs little; their order shuffled every epoch.
    order = np.argsort([len(text) for text in texts], kind="stable")
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.learning_rate, total_steps=config.epochs * len(batches), pct_start=0.1
    )
    rng = np.random.default_rng(config.seed)
    for epoch in range(config.epochs):
        started, cosines = time.perf_counter(), []
        for b in rng.permutation(len(batches)):
            rows = batches[b]
            tokens = tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            embedded = student(tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"])
            cosine = (embedded * target[rows]).sum(-1).mean()
            optimizer.zero_grad()
            (1 - cosine).backward()
            optimizer.step()
            schedule.step()
            cosines.append(cosine.item())
        log.info(
            "epoch %d/%d: mean cosine to MiniLM %.4f (%.0f s)",
            epoch + 1,
            config.epochs,
            float(np.mean(cosines)),
            time.perf_counter() - started,
        )
    return student.eval()


def served_ndcg(
    data: EvalData, bundle: Path, model: Path, encoder: Path, query_encoder: Path | None
) -> tuple[float, str]:
    """Held-out nDCG@10 through the service's request path in this process, with `query_encoder` as the query
    encoder (None: MiniLM, `encoder`), and the served model's version."""
    from training.evaluate.scoring import run_systems
    from training.evaluate.served import load_in_process

    served = load_in_process(bundle, model, encoder, query_encoder=query_encoder)
    evaluation = run_systems(data, ["served"], served=served, encoder=None)
    return evaluation.summary("served").ndcg_at_10, served.model_version


def run(args: argparse.Namespace) -> int:
    config = StudentConfig(args.layers, args.epochs, args.learning_rate, args.batch_size)
    everything = load_eval_data(args.data, "all")
    test = load_eval_data(args.data, "test")
    held_out = {q.id for q in test.queries}
    texts = training_texts(everything, held_out)
    log.info(
        "distilling MiniLM's first %d layers on %d texts (%d items, %d queries outside the %d held-out ones)",
        config.layers,
        len(texts),
        len(everything.items),
        len(texts) - len(everything.items),
        len(held_out),
    )
    teacher = TextEncoder(args.encoder)
    student = distil(texts, teacher, config)
    queries = [q.text for q in test.queries]
    cosine = (student_embeddings(student, queries) * teacher.encode(queries)).sum(1)
    about: dict[str, Any] = {
        "teacher": teacher.name,
        "config": asdict(config),
        "texts": len(texts),
        "data": str(args.data),
        "held_out_cosine": {"mean": round(float(cosine.mean()), 4), "min": round(float(cosine.min()), 4)},
    }
    write_encoder(student, args.out, {"student": about})
    teacher_ndcg, version = served_ndcg(test, args.bundle, args.model, args.encoder, None)
    student_ndcg, _ = served_ndcg(test, args.bundle, args.model, args.encoder, args.out)
    passed = student_ndcg >= teacher_ndcg - MAX_DROP
    about["gate"] = {
        "model_version": version,
        "queries": len(queries),
        "teacher_ndcg": round(teacher_ndcg, 4),
        "student_ndcg": round(student_ndcg, 4),
        "max_drop": MAX_DROP,
        "passed": passed,
    }
    info_path = args.out / "encoder.json"
    info = json.loads(info_path.read_text())
    info["student"] = about
    info_path.write_text(json.dumps(info, indent=2))
    verdict = "passed: serve it with RANK_QUERY_ENCODER_DIR" if passed else "FAILED: keep MiniLM"
    print(
        f"student ({config.layers} layers) held-out served nDCG@10 {student_ndcg:.4f} against MiniLM's "
        f"{teacher_ndcg:.4f} on {len(queries)} queries (model {version}); gate (at most {MAX_DROP} lower) {verdict}; "
        f"held-out cosine to MiniLM {about['held_out_cosine']['mean']}; written to {args.out}"
    )
    return 0 if passed else GATE_FAILED


def student_embeddings(student: MeanPooledEncoder, texts: list[str]) -> np.ndarray:
    """The student's PyTorch embeddings of `texts` (one batch)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_source()))
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    with torch.inference_mode():
        return student(tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"]).numpy()


def build_parser() -> argparse.ArgumentParser:
    defaults = StudentConfig()
    parser = argparse.ArgumentParser(prog="python -m training.student", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="dataset directory (user format)")
    parser.add_argument("--model", type=Path, default=Path("artifacts"), help="the model the gate serves")
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/bundle"), help="the bundle the gate serves")
    parser.add_argument("--encoder", type=Path, default=Path("artifacts/encoders/minilm"), help="MiniLM (teacher)")
    parser.add_argument("--out", type=Path, default=STUDENT_DIR, help=f"student directory (default {STUDENT_DIR})")
    parser.add_argument("--layers", type=int, default=defaults.layers, choices=range(1, 6), metavar="1-5")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_cli_logging()
    if args.epochs < 1 or args.batch_size < 1:
        print("error: --epochs and --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (DataError, EvaluateError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
