"""Export CLIP's image tower from a local transformers `CLIPModel` directory to an ONNX image encoder.

Run as `python -m index.export.image_encoder --clip /path/to/clip --out artifacts/encoders/clip` (or
`make image-encoder CLIP=/path/to/clip`); `--clip` defaults to the `RANK_CLIP_DIR` environment variable. The
directory is what `CLIPModel.save_pretrained` writes (config.json, model.safetensors) plus, ideally, the
checkpoint's `preprocessor_config.json`. Nothing is ever fetched from a model hub. Needs torch (training extra); the
index build then runs the graph through `index.offline.image_encoder.ImageEncoder` with ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from index.export.torch_to_onnx import torch_to_onnx
from index.offline.image_encoder import ENCODER_INFO_FILE, MODEL_FILE, PREPROCESSOR_FILE
from index.offline.images import ClipPreprocessing
from index.runtime.files import sha256_file

log = logging.getLogger(__name__)

CLIP_DIR_ENV = "RANK_CLIP_DIR"
PARITY_TOLERANCE = 1e-4


class _ImageTower(nn.Module):
    """CLIP's vision transformer + visual projection, L2-normalised: what CLIP compares by cosine."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # transformers 5 returns an output object; pooler_output is the projected image embedding (B, projection_dim)
        features = self.clip.get_image_features(pixel_values=pixel_values).pooler_output
        return nn.functional.normalize(features, dim=-1)


def load_clip(clip_dir: Path) -> Any:
    """A CLIPModel from a local directory only; a missing or incomplete directory is a FileNotFoundError."""
    from transformers import CLIPModel

    clip_dir = Path(clip_dir)
    if not (clip_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{clip_dir} holds no CLIP checkpoint (no config.json); point --clip or {CLIP_DIR_ENV} at a local "
            "directory written by CLIPModel.save_pretrained"
        )
    try:
        model = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot load a CLIPModel from {clip_dir}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def export_image_encoder(clip_dir: Path, out_dir: Path, *, name: str | None = None) -> Path:
    """Write model.onnx, preprocessor_config.json and encoder.json to out_dir, check parity; returns out_dir."""
    clip_dir, out_dir = Path(clip_dir), Path(out_dir)
    clip = load_clip(clip_dir)
    vision = clip.config.vision_config
    if (clip_dir / PREPROCESSOR_FILE).exists():
        preprocess = ClipPreprocessing.from_file(clip_dir / PREPROCESSOR_FILE)
    else:
        log.warning("%s has no %s: using CLIP's defaults at %dpx", clip_dir, PREPROCESSOR_FILE, vision.image_size)
        preprocess = ClipPreprocessing.for_image_size(int(vision.image_size))
    if preprocess.shape != (vision.image_size, vision.image_size) and vision.image_size:
        log.warning("preprocessing crops %s but the model was built for %dpx", preprocess.shape, vision.image_size)

    tower = _ImageTower(clip).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, *preprocess.shape, generator=generator)
    onnx_path = out_dir / MODEL_FILE
    with torch.inference_mode():
        reference = tower(sample).numpy()
    torch_to_onnx(
        tower,
        (sample,),
        onnx_path,
        input_names=["pixel_values"],
        output_names=["image_embedding"],
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
    )
    (out_dir / PREPROCESSOR_FILE).write_text(json.dumps(preprocess.to_config(), indent=2) + "\n")
    info = {
        "name": name or clip_dir.resolve().name,
        "source": str(clip_dir.resolve()),
        "dim": int(reference.shape[1]),
        "output": "CLIPModel.get_image_features(pixel_values).pooler_output, L2-normalised",
        "architecture": {
            "hidden_size": int(vision.hidden_size),
            "layers": int(vision.num_hidden_layers),
            "heads": int(vision.num_attention_heads),
            "patch_size": int(vision.patch_size),
            "image_size": int(vision.image_size),
            "projection_dim": int(clip.config.projection_dim),
            "parameters": sum(p.numel() for m in (clip.vision_model, clip.visual_projection) for p in m.parameters()),
        },
        "files": {n: sha256_file(out_dir / n) for n in (MODEL_FILE, PREPROCESSOR_FILE)},
    }
    (out_dir / ENCODER_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    from index.offline.image_encoder import ImageEncoder

    exported = ImageEncoder(out_dir).encode_pixels(sample.numpy())
    diff = float(np.abs(exported - reference).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"exported image encoder disagrees with PyTorch: max abs diff {diff:.2e}")
    log.info("image encoder exported to %s (%d-d, max abs diff vs PyTorch %.1e)", out_dir, info["dim"], diff)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m index.export.image_encoder", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clip",
        type=Path,
        default=os.environ.get(CLIP_DIR_ENV) or None,
        help=f"local CLIPModel directory (default: ${CLIP_DIR_ENV})",
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/encoders/clip"))
    parser.add_argument("--name", default=None, help="name recorded in encoder.json (default: the directory's name)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.clip is None:
        print(f"error: no CLIP checkpoint given: pass --clip DIR or set {CLIP_DIR_ENV}", file=sys.stderr)
        return 2
    try:
        export_image_encoder(args.clip, args.out, name=args.name)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: could not export the image encoder: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
