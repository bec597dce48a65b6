"""loadtests/bench/ann.py: the SYNTHETIC vector space and a tiny end-to-end run of the benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from loadtests.bench.ann import SyntheticSpace, main, nlist_for


def test_space_gives_unit_vectors_near_but_not_equal_to_items() -> None:
    space = SyntheticSpace(32, clusters=50, seed=0)
    items = space.sample(2_000, np.random.default_rng(1))
    queries = space.sample(100, np.random.default_rng(2))
    assert items.shape == (2_000, 32) and items.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    best = (queries @ items.T).max(axis=1)
    assert (best < 0.9999).all()  # no query is an item
    assert np.median(best) > 0.8  # but each lies near some


def test_nlist_is_the_power_of_two_nearest_four_sqrt_n() -> None:
    assert nlist_for(1_000_000) == 4096
    assert nlist_for(10_000_000) == 16384
    assert nlist_for(100_000) == 1024


def test_tiny_run_writes_every_row(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ann.json"
    args = ["--items", "3000", "--dims", "16", "--queries", "20", "--warmup", "2", "--nprobe", "4,8"]
    assert main([*args, "--hnsw-items", "16=2000", "--build-threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    names = [r["index"] for r in rows]
    assert names == ["Flat (exact)", *["IVF-PQ"] * 2, *["IVF-PQ+refine"] * 2, *["IVF-PQ x2 shards"] * 2, "HNSW"]
    assert rows[0]["recall_at_100"] == 1.0
    assert rows[-1]["items"] == 2000 and rows[-1]["recall_at_100"] > 0.9
    assert all(0.0 < r["recall_at_100"] <= 1.0 and r["index_bytes"] > 0 for r in rows)
    # the shards hold the same codes under the same quantizer: at the same nprobe they find the same items
    assert [r["recall_at_100"] for r in rows[5:7]] == [r["recall_at_100"] for r in rows[1:3]]
    assert "| 16 | HNSW | 2,000 |" in capsys.readouterr().out
