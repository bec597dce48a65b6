"""The embedded SYNTHETIC generator: byte-for-byte determinism and label sanity."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

from training.synthetic import VOCABULARY, SyntheticConfig, generate, write_dataset

SMALL = SyntheticConfig(seed=11, items=300, queries=60)


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.jsonl"))}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", SMALL)
    write_dataset(tmp_path / "b", SMALL)
    write_dataset(tmp_path / "c", SyntheticConfig(seed=12, items=300, queries=60))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a")["items.jsonl"] != _digest(tmp_path / "c")["items.jsonl"]


def test_labels_are_consistent_with_the_hidden_truth() -> None:
    data = generate(SMALL)
    truth = {item["id"]: t for item, t in zip(data["items"], data["truth"])}
    queries = {q["id"]: q for q in data["queries"]}
    judged = defaultdict(dict)
    for j in data["judgments"]:
        assert 1 <= j["grade"] <= 3  # grade 0 is implied by absence
        assert j["compliant"] == (j["grade"] >= 2)
        constraints = queries[j["query_id"]]["constraints"]
        met = sum(truth[j["item_id"]][f] == v for f, v in constraints.items())
        assert (met == len(constraints)) == j["compliant"]
        judged[j["query_id"]][j["item_id"]] = j["grade"]
    for qid, q in queries.items():
        assert 2 <= len(q["constraints"]) <= 3
        compliant = [i for i, t in truth.items() if all(t[f] == v for f, v in q["constraints"].items())]
        assert compliant, f"query {qid} has no compliant item"
        assert all(judged[qid].get(i, 0) >= 2 for i in compliant)  # judgments are complete


def test_splits_are_by_query_and_all_present() -> None:
    splits = [q["split"] for q in generate(SMALL)["queries"]]
    assert {"train", "val", "test"} == set(splits)
    assert splits.count("test") == int(SMALL.queries * SMALL.test_fraction)


def test_modalities_each_hide_some_signal() -> None:
    data = generate(SyntheticConfig(seed=5, items=2000, queries=20))
    colour_words = {w: c for c, words in VOCABULARY["colour"].items() for w in words}
    listed = sum("colour" in item["attributes"] for item in data["items"]) / 2000
    assert 0.3 < listed < 0.6  # metadata often silent
    false_titles = sum(
        any(w in item["title"].lower() and colour_words[w] != t["colour"] for w in colour_words if " " not in w)
        for item, t in zip(data["items"], data["truth"])
    )
    assert false_titles > 50  # hard negatives: the title names a colour the drink does not have
    assert all(len(item["image_embedding"]) == 512 for item in data["items"])
