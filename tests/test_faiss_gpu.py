"""The FAISS GPU probe: a first GPU search runs in a child process, so a build without kernels for this GPU (the
`gpu` extra's faiss on a Hopper GPU) leaves FAISS on the CPU with a reason instead of killing the service."""

from __future__ import annotations

import faiss
import pytest

from index.runtime.faiss_gpu import PROBE, gpu_available, gpu_search_problem, run_probe


def test_a_child_that_succeeds_is_no_problem() -> None:
    assert run_probe("pass") is None


def test_a_child_that_aborts_is_reported_not_inherited() -> None:
    # What a failed CUDA check inside FAISS does: abort(), not an exception the parent could catch.
    problem = run_probe("import os; os.abort()")
    assert problem is not None and "SIGABRT" in problem


def test_the_childs_last_error_line_is_the_reason() -> None:
    problem = run_probe("import sys; print('noise', file=sys.stderr); sys.exit('no kernel image is available')")
    assert problem is not None
    assert problem.endswith("no kernel image is available") and "exited 1" in problem


def test_a_child_that_hangs_is_given_up_on() -> None:
    problem = run_probe("import time; time.sleep(30)", timeout=0.5)
    assert problem is not None and "did not finish" in problem


@pytest.mark.skipif(hasattr(faiss, "StandardGpuResources"), reason="a FAISS GPU build is installed here")
def test_the_probe_itself_runs_and_says_why_on_a_cpu_build() -> None:
    # The probe's own code, run for real in a child: on faiss-cpu it must get as far as its first check.
    assert run_probe(PROBE) == (
        "a test search on the GPU failed (the process exited 1): no FAISS GPU build, or no GPU visible to it"
    )
    assert gpu_search_problem() == "the installed faiss has no GPU support (faiss-cpu)"
    assert not gpu_available()
