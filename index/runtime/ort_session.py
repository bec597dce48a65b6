"""ONNX Runtime session construction: one place that picks the execution provider and tunes the session."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# ONNX Runtime's CUDA provider runs fp32 matmuls as TF32 by default. That moved the ranker's scores by about 2e-4 on
# an H200, past the export's parity tolerance (1e-4), and reorders near-ties against the CPU's rankings.
CUDA_OPTIONS = {"use_tf32": "0"}


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it (onnxruntime-gpu on a GPU machine), else CPU."""
    return [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the `nvidia-*` pip packages before the first CUDA session.

    onnxruntime-gpu links against them but does not find them in site-packages by itself; `import torch` would load
    them, and the service never imports torch. Missing libraries are left to the session's own error."""
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


def make_session(
    path: Path | bytes, *, providers: list[str] | None = None, threads: int = 1, spin_us: int | None = None
) -> ort.InferenceSession:
    """An InferenceSession with full graph optimisation and a small, fixed thread pool, for a model file (or a
    serialised model built in memory, `index.runtime.scoring_graph`).

    One intra-op thread by default: the request path runs many small graphs, where thread hand-off costs more than
    it saves, and the service's concurrency comes from batching, not from splitting one small matmul.

    `spin_us` bounds how long the pool's idle threads spin before they sleep (ONNX Runtime's default spins for
    milliseconds, a core kept busy after every run); None keeps the default.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if spin_us is not None:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    providers = providers or default_providers()
    if CUDA in providers:
        preload_cuda_libraries()
    try:
        session = ort.InferenceSession(
            path if isinstance(path, bytes) else str(path),
            sess_options=options,
            providers=[(p, CUDA_OPTIONS) if p == CUDA else p for p in providers],
        )
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        raise ValueError(f"cannot load ONNX model {_name(path)}: {exc}") from exc
    log.debug("loaded %s with providers %s", _name(path), session.get_providers())
    return session


def _name(path: Path | bytes) -> str:
    return "(built in memory)" if isinstance(path, bytes) else str(path)
