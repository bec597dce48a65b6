"""loadtests.compare_served: two checkouts serving the same artifacts are compared answer by answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests import compare_served
from training.paths import ROOT

from .toy_artifacts import ToyArtifacts


def test_compare_flags_another_order_and_a_score_beyond_the_tolerance() -> None:
    first = [(["a", "b"], [2.0, 1.0]), (["c", "d"], [1.0, 0.5])]
    assert compare_served.compare(first, first, 0.0).endswith(": same")
    reordered = [(["a", "b"], [2.0, 1.0]), (["d", "c"], [1.0, 0.5])]
    assert "1 of 2 with identical ids" in compare_served.compare(first, reordered, 0.0)
    nudged = [(["a", "b"], [2.0, 1.0 + 1e-6]), (["c", "d"], [1.0, 0.5])]
    assert compare_served.compare(first, nudged, 0.0).endswith("DIFFERENT")
    assert compare_served.compare(first, nudged, 1e-5).endswith(": same")


@pytest.mark.integration
def test_one_checkout_against_itself_serves_the_same_answers(
    toy: ToyArtifacts, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real service processes in turn (the same checkout twice): every /rank and /rerank answer is identical."""
    monkeypatch.setenv("RANK_REQUIRE_BEATS_BASELINE", "false")  # a toy model beats no baseline
    monkeypatch.setenv("RANK_WARMUP_QUERIES", "2")
    argv = ["--tree", str(ROOT), "--tree", str(ROOT), "--data", str(toy.data), "--count", "12"]
    argv += ["--model", str(toy.model), "--bundle", str(toy.bundle), "--encoder", str(toy.encoder)]
    assert compare_served.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0].rsplit(", ", 1)[1] for line in lines] == ["/rank", "/rerank"]
    assert all("12 of 12 with identical ids, max |score difference| 0: same" in line for line in lines)


def test_one_tree_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        compare_served.main(["--tree", str(tmp_path), "--data", str(tmp_path)])
    assert stopped.value.code == 2
