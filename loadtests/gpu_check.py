"""The GPU figures in one command, on a CUDA machine: `make gpu-check` (it installs the `gpu` extra first).

Each step is timed and the run stops at the first that fails, saying which:

1. the GPU is visible to torch, to onnxruntime (CUDAExecutionProvider) and to FAISS;
2. the GPU tests (tests/test_gpu.py) pass;
3. `make data encoder`, then training on CUDA with a short schedule (`--epochs`, `--retrieval-epochs`): seconds per
   epoch of the retriever and of the ranker;
4. export (parity checked) and a bundle;
5. the service with RANK_DEVICE=cuda and no CPU fallback: /health/ready must name CUDAExecutionProvider and a GPU
   FAISS index;
6. `loadtests.server_time`, cached and never-seen queries (sequential requests, stage p50/p99).

The figures are written as the "GPU" section of BENCHMARKS.md (between the gpu-check markers; the section is added
when absent). Everything is built under build/gpu-check, so the user's artifacts stay as they are. `--rehearse`
runs the same steps on the CPU, skipping the GPU checks, and writes its section to build/gpu-check/rehearsal.md
instead: a way to try the script where no GPU is lent. The whole run is meant to fit in 8 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from loadtests.process import free_port, stop_group, wait_ready

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "gpu-check"
BEGIN, END = "<!-- gpu-check: begin -->", "<!-- gpu-check: end -->"
PY = sys.executable


class StepFailed(RuntimeError):
    """A step of the check failed; the message says which and why."""


def run(step: str, command: list[str], env: dict[str, str] | None = None) -> str:
    """Run a step's command, its output to build/gpu-check/<step>.log; StepFailed with the log's tail on failure."""
    log = WORK / f"{step}.log"
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    log.write_text(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
    if done.returncode:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise StepFailed(f"{step}: `{' '.join(command)}` exited {done.returncode}: " + " | ".join(tail))
    return done.stdout


def gpu_visible() -> list[str]:
    """What sees the GPU, as lines for the report; StepFailed when something does not."""
    import onnxruntime as ort
    import torch

    from index.runtime.faiss_index import gpu_available

    lines = []
    if not torch.cuda.is_available():
        raise StepFailed("gpu: torch sees no CUDA GPU")
    lines.append(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise StepFailed("gpu: onnxruntime has no CUDAExecutionProvider (is onnxruntime-gpu installed?)")
    lines.append(f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}")
    if not gpu_available():
        raise StepFailed("gpu: faiss sees no GPU (is faiss-gpu installed?)")
    lines.append("faiss: GPU available")
    return lines


def server_rows(env: dict[str, str], requests: int) -> tuple[dict[str, object], list[str]]:
    """Start the service on the check's artifacts; its readiness and the cached and never-seen stage tables."""
    port = free_port()
    process = subprocess.Popen(
        [PY, "-m", "service", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout=180, interval=0.5, name="the service")
        with urllib.request.urlopen(f"{url}/health/ready", timeout=5) as response:
            ready = json.loads(response.read())
        tables = []
        for flag in ([], ["--never-seen"]):
            command = [PY, "-m", "loadtests.server_time", "--url", url, "--requests", str(requests), *flag]
            tables.append(run("server-time" + ("-never-seen" if flag else ""), command, env))
        return ready, tables
    finally:
        stop_group(process, grace=5)


def write_section(section: str, rehearse: bool) -> Path:
    if rehearse:
        out = WORK / "rehearsal.md"
        out.write_text(section)
        return out
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    block = f"{BEGIN}\n{section}{END}\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true", help="the same steps on the CPU, no GPU checks")
    parser.add_argument("--epochs", type=int, default=10, help="ranker epochs of the short training (default 10)")
    parser.add_argument("--retrieval-epochs", type=int, default=10, help="retriever epochs (default 10)")
    parser.add_argument("--requests", type=int, default=300, help="requests per server_time run (default 300)")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.rehearse else "cuda"
    started = time.perf_counter()
    timings: list[tuple[str, float]] = []

    def lap(step: str) -> None:
        timings.append((step, time.perf_counter() - started - sum(t for _, t in timings)))
        print(f"{step}: done ({timings[-1][1]:.0f} s)", flush=True)

    try:
        visible = ["(rehearsal on the CPU: GPU checks skipped)"] if args.rehearse else gpu_visible()
        lap("gpu visible")
        if not args.rehearse:
            run("gpu-tests", [PY, "-m", "pytest", "-q", "tests/test_gpu.py"])
        lap("gpu tests")
        # GPU= keeps make on this .venv's stamp: with the other one it would reinstall the CPU builds over it.
        run("data-encoder", ["make", "--no-print-directory", "data", "encoder", f"GPU={0 if args.rehearse else 1}"])
        artifacts = WORK / "artifacts"
        train = [PY, "-m", "training.cli", "train", "--device", device, "--out-dir", str(artifacts)]
        train += ["--epochs", str(args.epochs), "--retrieval-epochs", str(args.retrieval_epochs)]
        run("train", train)
        training = json.loads((artifacts / "metrics.json").read_text())["training"]
        lap("train")
        run("export", [PY, "-m", "training.cli", "export", "--out-dir", str(artifacts)])
        bundle = WORK / "bundle"
        run("index", [PY, "-m", "index.offline.build", "--model", str(artifacts), "--out", str(bundle)])
        lap("export and index")
        env = {
            **os.environ,
            "RANK_MODEL_DIR": str(artifacts),
            "RANK_BUNDLE_DIR": str(bundle),
            "RANK_DEVICE": device,
            "RANK_ALLOW_CPU_FALLBACK": "false",
            "RANK_REQUIRE_BEATS_BASELINE": "false",  # a 10-epoch model is for timing, not for quality
            "OMP_NUM_THREADS": "1",
        }
        ready, tables = server_rows(env, args.requests)
        if not args.rehearse and (ready["provider"] != "CUDAExecutionProvider" or ready["retriever_device"] != "cuda"):
            raise StepFailed(
                f"service: not on the GPU: provider {ready['provider']}, FAISS {ready['retriever_device']}"
            )
        lap("service and bench rows")
    except StepFailed as exc:
        print(f"error: {exc} (logs in {WORK})", file=sys.stderr)
        return 1
    total = time.perf_counter() - started
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            f"## GPU (`make gpu-check`{', rehearsal on the CPU' if args.rehearse else ''}, {when})",
            "",
            *[f"- {line}" for line in visible],
            f"- training on {training['device']}: retriever {training['retriever_epochs_run']} epochs in "
            f"{training['retriever_seconds']} s, ranker {training['epochs_run']} epochs at "
            f"{training['seconds_per_epoch']} s per epoch (the CPU's: see Training time above)",
            f"- service: ranker on {ready['provider']}, FAISS on {ready['retriever_device']}, {ready['items']} items",
            f"- steps: {', '.join(f'{name} {seconds:.0f} s' for name, seconds in timings)}; {total:.0f} s in all",
            "",
            "```",
            *[t.strip() for t in tables],
            "```",
            "",
        ]
    )
    print(f"wrote {write_section(section, args.rehearse)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
