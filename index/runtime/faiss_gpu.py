"""Whether FAISS can search on this machine's GPU, found out in a child process before the index moves there.

A FAISS GPU build can import, count the GPU and copy an index onto it, and still carry no kernels for that GPU's
architecture: faiss-gpu-cu12 1.14.1 held sm_70 and sm_80 code and no PTX, so on a Hopper GPU (H100, H200: sm_90)
every search failed. The `gpu` extra's faiss-cuda 1.14.3 holds sm_70 to sm_90, but a newer GPU, a driver too old for
CUDA 12.8 or missing CUDA 12 libraries fail the same way, and a failed CUDA check inside FAISS can abort the process
instead of raising. A first search in the service's own
process could therefore kill it at start-up. The probe runs that first search in a child process, on a small
random index, and the GPU's answer must match the CPU's before the service uses the GPU.
"""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
import sys

import faiss

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0  # a first CUDA context plus a small copy and search: seconds even on a busy host

# Runs in a child interpreter: exact search on the GPU against the CPU, 16 queries over 2,048 random vectors.
PROBE = """
import sys
import faiss
import numpy as np
if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
    sys.exit("no FAISS GPU build, or no GPU visible to it")
rng = np.random.default_rng(0)
items = rng.standard_normal((2048, 64)).astype(np.float32)
queries = rng.standard_normal((16, 64)).astype(np.float32)
cpu = faiss.IndexFlatIP(64)
cpu.add(items)
resources = faiss.StandardGpuResources()
gpu = faiss.index_cpu_to_gpu(resources, 0, cpu)
_, want = cpu.search(queries, 10)
_, got = gpu.search(queries, 10)
wrong = int((got != want).any(axis=1).sum())
if wrong:
    sys.exit(f"the GPU's top 10 differs from the CPU's on {wrong} of 16 test queries")
"""


def run_probe(code: str = PROBE, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Run `code` in a child interpreter: None when it exits 0, else one sentence saying how it failed."""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"a test search on the GPU did not finish in {timeout:.0f} s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        how = f"the process was killed by {signal.Signals(-done.returncode).name}"
    else:
        how = f"the process exited {done.returncode}"
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return f"a test search on the GPU failed ({how}): {last[:240]}"


@functools.cache
def gpu_search_problem() -> str | None:
    """None when FAISS can search on the GPU here; else why not, in one sentence. Probes once per process."""
    if not hasattr(faiss, "StandardGpuResources"):
        return "the installed faiss has no GPU support (faiss-cpu)"
    if faiss.get_num_gpus() < 1:
        return "faiss sees no GPU"
    problem = run_probe()
    if problem is not None:
        # A GPU build and a GPU but no working search: most often a GPU newer than the build's architectures.
        log.warning("FAISS stays on the CPU: %s", problem)
    return problem


def gpu_available() -> bool:
    """A FAISS GPU build, a visible GPU, and a test search there that matches the CPU's."""
    return gpu_search_problem() is None
