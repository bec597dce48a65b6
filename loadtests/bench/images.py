"""Image-encoding throughput: `python -m loadtests.bench.images` (or `make bench-images`).

No CLIP weights exist on this machine, and encoding cost does not depend on the weights' values, so the benchmark
builds randomly initialised CLIP image towers: the tiny one the tests use, and the real ViT-B/32 architecture
(transformers' `CLIPVisionConfig` defaults: 224 px, 32 px patches, 12 layers of width 768, projection 512). It
reports, on real photos (default: the Pexels catalog in ../shared): decoding + CLIP preprocessing per second,
ONNX Runtime encoding per second (and PyTorch eager for comparison), and optionally a whole `index.offline.ingest` run.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from index.cli_logging import configure_cli_logging
from index.offline.image_encoder import ImageEncoder
from index.offline.images import ClipPreprocessing, load_image

log = logging.getLogger(__name__)

DEFAULT_IMAGES = Path("../shared/data/pexels_cocktails")
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,
    "patch_size": 32,
}
# The text tower is never run when encoding images; a small one keeps the random checkpoint small on disk.
SMALL_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


@dataclass
class EncoderTiming:
    """Throughput of one image tower on this machine."""

    model: str
    parameters: int
    batch: int
    images: int
    onnx_images_per_s: float
    onnx_ms_per_image: float
    torch_images_per_s: float | None


def random_clip(kind: str, root: Path) -> Path:
    """A randomly initialised CLIP checkpoint (`kind` "tiny" or "vit-b32" vision tower) saved under `root`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionConfig

    torch.manual_seed(0)
    vision = CLIPVisionConfig().to_dict() if kind == "vit-b32" else TINY_VISION
    config = CLIPConfig(text_config=SMALL_TEXT, vision_config=vision, projection_dim=512)
    path = root / f"clip-{kind}"
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessorPil().save_pretrained(path)
    return path


def _image_files(source: Path, count: int) -> list[Path]:
    manifest = source / "manifest.csv"
    if manifest.exists():
        with open(manifest, newline="") as handle:
            files = [source / row["file"] for row in csv.DictReader(handle)]
    else:
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not files:
        raise FileNotFoundError(f"no images under {source}")
    return files[:count]


def time_decoding(files: list[Path], workers: int) -> tuple[float, np.ndarray]:
    """(images per second for decode + preprocess, the pixels)."""
    preprocess = ClipPreprocessing()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pixels = np.stack(list(pool.map(lambda f: preprocess(load_image(f)), files)))
    return len(files) / (time.perf_counter() - started), pixels


def time_encoder(kind: str, pixels: np.ndarray, batch: int, root: Path, with_torch: bool) -> EncoderTiming:
    import torch

    from index.export.image_encoder import export_image_encoder, load_clip

    checkpoint = random_clip(kind, root)
    torch_rate = None
    if with_torch:  # before any ONNX Runtime session exists: its idle threads spin and would slow PyTorch down
        clip = load_clip(checkpoint)
        tensor = torch.from_numpy(pixels)
        with torch.inference_mode():
            clip.get_image_features(pixel_values=tensor[:batch])
            started = time.perf_counter()
            for s in range(0, len(tensor), batch):
                clip.get_image_features(pixel_values=tensor[s : s + batch])
            torch_rate = len(pixels) / (time.perf_counter() - started)
        del clip
    encoder_dir = export_image_encoder(checkpoint, root / f"onnx-{kind}")
    encoder = ImageEncoder(encoder_dir)
    encoder.encode_pixels(pixels[:batch], batch)  # warm-up: first-run allocations are not throughput
    started = time.perf_counter()
    encoder.encode_pixels(pixels, batch)
    onnx_seconds = time.perf_counter() - started
    return EncoderTiming(
        model=kind,
        parameters=int(encoder.info["architecture"]["parameters"]),
        batch=batch,
        images=len(pixels),
        onnx_images_per_s=round(len(pixels) / onnx_seconds, 1),
        onnx_ms_per_image=round(1000 * onnx_seconds / len(pixels), 2),
        torch_images_per_s=None if torch_rate is None else round(torch_rate, 1),
    )


def time_ingest(source: Path, model_dir: Path, text_encoder: Path, root: Path, kind: str) -> dict[str, object]:
    """A whole ingestion of `source` with one of the exported towers (seconds, and the run's own images/s)."""
    from index.offline.ingest import IngestConfig, ingest

    cfg = IngestConfig(
        data=source,
        model_dir=model_dir,
        text_encoder_dir=text_encoder,
        image_encoder_dir=root / f"onnx-{kind}",
        out=root / f"bundle-{kind}",
        workers=os.cpu_count() or 1,
    )
    started = time.perf_counter()
    report = ingest(cfg)
    return {
        "model": kind,
        "items": report.items_indexed,
        "seconds": round(time.perf_counter() - started, 2),
        "images_per_s": report.images_per_second,
        "near_duplicates": len(report.near_duplicates),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.images", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder (with manifest.csv) of photos")
    parser.add_argument("--count", type=int, default=256, help="photos to decode and encode")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--models", default="tiny,vit-b32", help="comma-separated: tiny, vit-b32")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding threads")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager comparison")
    parser.add_argument("--ingest-model", type=Path, default=None, help="ranker dir: also time whole ingests")
    parser.add_argument("--ingest-encoder", type=Path, default=Path("artifacts/encoders/minilm"))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    configure_cli_logging()
    logging.getLogger("index.export.image_encoder").setLevel(logging.WARNING)  # its export notes would break the table
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := sorted(set(models) - {"tiny", "vit-b32"}):
        print(f"error: unknown model(s) {', '.join(unknown)}; choose from tiny, vit-b32", file=sys.stderr)
        return 2
    try:
        files = _image_files(args.images, args.count)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    decode_rate, pixels = time_decoding(files, args.workers)
    log.info("decode + preprocess: %.1f images/s with %d threads", decode_rate, args.workers)
    results: dict[str, object] = {
        "machine": f"{os.cpu_count()} CPU cores",
        "images": str(args.images),
        "decode_preprocess_images_per_s": round(decode_rate, 1),
        "encoders": [],
    }
    ingests: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        timings = []
        for kind in models:
            timing = time_encoder(kind, pixels, args.batch, root, not args.no_torch)
            log.info("%s", timing)
            timings.append(timing)
        results["encoders"] = [asdict(t) for t in timings]
        if args.ingest_model is not None:
            ingests = [time_ingest(args.images, args.ingest_model, args.ingest_encoder, root, k) for k in models]
            results["ingest"] = ingests
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")

    print(f"decode + CLIP preprocessing ({args.workers} threads): {decode_rate:.1f} images/s on {len(files)} photos")
    print("| image tower (random weights) | parameters | batch | ONNX Runtime images/s | ms/image | PyTorch images/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t in timings:
        torch_rate = "-" if t.torch_images_per_s is None else f"{t.torch_images_per_s}"
        print(
            f"| {t.model} | {t.parameters / 1e6:.2f}M | {t.batch} | {t.onnx_images_per_s} | {t.onnx_ms_per_image} "
            f"| {torch_rate} |"
        )
    for run in ingests:
        print(f"whole ingest: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
