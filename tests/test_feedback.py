"""Learning from the traffic the service logged (training/feedback, issue 38): the propensity estimators recover
known examination probabilities, inverse-propensity weighting undoes the position bias that plain click rates keep,
simulated users go through the real endpoints into the log, and `make train FEEDBACK=dir` trains from it, keeping
the test queries' sessions out and saying in the card what it learned from."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.runtime.text_encoder import TextEncoder
from service.app import create_app
from training.cli import run_train
from training.dataset import load_dataset
from training.evaluate import propensity_check, simulate
from training.feedback.labels import click_labels, grade_of
from training.feedback.merge import FeedbackOptions
from training.feedback.propensity import em_propensity, estimate_propensity, swap_propensity
from training.feedback.sessions import FeedbackError, Session, read_feedback_log
from training.train import TrainConfig

from .conftest import TinyPipeline, serving_settings
from .live_service import serve_in_thread


def _simulated_sessions(count: int, users: simulate.Users, explore: float = 0.2, depth: int = 10) -> list[Session]:
    """Sessions of a fixed ranking per query with adjacent swaps, clicked by `users` (in process, no service)."""
    rng = random.Random(users.seed)
    shown_by_query = {q: [f"q{q}-d{k}" for k in range(depth)] for q in range(40)}
    grades = {item: rng.choice([0, 0, 0, 1, 3]) for items in shown_by_query.values() for item in items}
    sessions = []
    for n in range(count):
        q = rng.randrange(40)
        shown, explored = list(shown_by_query[q]), None
        if rng.random() < explore:
            k = rng.randrange(depth - 1)
            shown[k], shown[k + 1] = shown[k + 1], shown[k]
            explored = (k + 1, k + 2)
        clicked = frozenset(users.clicks(shown, grades, rng))
        sessions.append(Session(str(n), f"query {q}", tuple(shown), clicked, explored))
    return sessions


def test_both_estimators_recover_the_users_examination_propensities() -> None:
    users = simulate.Users(eta=1.0, noise=0.1, top_grade=3, seed=5)
    sessions = _simulated_sessions(60_000, users)
    truth = np.array([users.examined(k) for k in range(1, 11)])
    em, swap = em_propensity(sessions), swap_propensity(sessions)
    assert em[0] == swap[0] == 1.0
    assert np.abs(em[1:5] - truth[1:5]).max() < 0.05, em
    assert np.abs(swap[1:4] - truth[1:4]).max() < 0.07, swap
    assert (np.diff(em) <= 0).all() and (np.diff(swap) <= 0).all()  # examination never rises down the list
    assert (estimate_propensity("none", sessions) == 1.0).all()
    with pytest.raises(ValueError, match="em, swap, none"):
        estimate_propensity("cascade", sessions)


def test_swap_estimates_stay_close_deep_in_a_list_where_single_pair_ratios_are_noisy() -> None:
    # 40 positions: a swap lands on each pair 1 time in 195 and deep positions get few clicks, so each adjacent
    # ratio alone is noisy. Chained one by one, each capped at 1, they were off by 1.36 in mean |log ratio| (a factor
    # of 4) and by 0.44 within the top 20; pooled, by 0.36 and 0.17.
    users = simulate.Users(eta=1.0, noise=0.1, top_grade=3, seed=6)
    depth = 40
    sessions = _simulated_sessions(60_000, users, depth=depth)
    truth = np.array([users.examined(k) for k in range(1, depth + 1)])
    swap = swap_propensity(sessions, depth)
    assert (np.diff(swap) <= 0).all()
    error = np.abs(np.log(swap / truth))
    assert error.mean() < 0.7 and error[:20].max() < 0.3, np.round(swap, 3)


def test_inverse_propensity_weights_undo_the_position_bias_plain_click_rates_keep() -> None:
    # Two equally attractive items: "top" always at position 1, "low" always at 4, examined a quarter as often.
    sessions = [
        Session(str(n), "q", ("top", "x", "y", "low"), frozenset({"top"} if n < 40 else {"low"} if n < 50 else set()))
        for n in range(100)
    ]
    theta = np.array([1.0, 0.5, 1 / 3, 0.25])
    corrected = click_labels(sessions, theta, "em").grades["q"]
    plain = click_labels(sessions, np.ones(4), "none").grades["q"]
    assert corrected["top"] == pytest.approx(corrected["low"]) == pytest.approx(grade_of(0.4))
    assert plain["top"] == pytest.approx(grade_of(0.4)) and plain["low"] == pytest.approx(grade_of(0.1))
    assert corrected["x"] == 0.0 and grade_of(1.0) == 3.0 and grade_of(3 / 7) == pytest.approx(2.0)


@pytest.fixture(scope="module")
def simulated_log(tiny: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """400 simulated sessions over every judged query of the tiny data, through the real /rank and /feedback of a
    service logging every impression with exploration on."""
    logs = tmp_path_factory.mktemp("clicks") / "log"
    settings = serving_settings(tiny, log_dir=logs, log_sample=1.0, explore=0.2)
    with serve_in_thread(create_app(settings)) as url:
        arguments = ["--data", str(tiny.data), "--url", url, "--sessions", "400", "--logs", str(logs), "--wait", "0"]
        assert simulate.main([*arguments, "--split", "all", "--seed", "3"]) == 0
    return logs, json.loads((logs / "simulation.json").read_text())


def test_simulated_sessions_reach_the_log_through_the_real_endpoints(simulated_log: tuple[Path, dict]) -> None:
    logs, sent = simulated_log
    log = read_feedback_log(logs)
    assert log.impressions == len(log.sessions) == sent["sessions"] == 400
    assert sum(len(s.clicked) for s in log.sessions) == log.feedback == sent["clicks"] > 0
    assert log.unmatched == log.off_list == 0
    assert 40 < sum(s.explored is not None for s in log.sessions) < 130  # RANK_EXPLORE 0.2 of 400
    assert sent["true_propensity"][:3] == [1.0, 0.5, 0.3333]


def test_the_propensity_check_compares_the_estimators_with_the_simulated_truth(
    simulated_log: tuple[Path, dict], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    logs, _ = simulated_log
    assert propensity_check.main(["--logs", str(logs), "--sessions", "100,400"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [(r[0], r[1]) for r in rows if r[0] in ("swap", "em")] == [
        ("swap", "100"),
        ("em", "100"),
        ("swap", "400"),
        ("em", "400"),
    ]
    assert propensity_check.main(["--logs", str(tmp_path)]) == 2  # not a simulated log: one sentence, exit 2
    assert "make simulate" in capsys.readouterr().err


def test_feedback_for_a_request_that_was_not_logged_is_counted_as_unmatched(
    simulated_log: tuple[Path, dict], tmp_path: Path
) -> None:
    logs, _ = simulated_log
    copy = tmp_path / "log"
    shutil.copytree(logs, copy)
    extra = {"kind": "feedback", "request_id": "never-sampled", "item_id": "x", "event": "purchase", "dwell_ms": None}
    (copy / "events-99999999T000000-1-000001.jsonl").write_text(json.dumps(extra) + "\n")
    (copy / "events-99999999T000000-1-000002.jsonl.partial").write_text('{"kind": "impr')  # a crash's leftover
    log = read_feedback_log(copy)
    assert log.unmatched == 1 and log.impressions == 400
    with pytest.raises(FeedbackError, match="RANK_LOG_DIR"):
        read_feedback_log(tmp_path / "nowhere")


def _click_cfg(tiny: TinyPipeline, logs: Path, out: Path, **overrides: object) -> TrainConfig:
    base: dict[str, object] = dict(
        data_dir=tiny.data,
        encoder_dir=tiny.encoder,
        out_dir=out,
        epochs=4,
        retrieval_epochs=3,
        dim=32,
        hidden=64,
        lr_grid="",
        feedback=str(logs),
        labels="clicks",
    )
    return TrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_training_from_clicks_leaves_the_test_queries_sessions_out_and_says_so(
    tiny: TinyPipeline, simulated_log: tuple[Path, dict], tmp_path: Path
) -> None:
    logs, _ = simulated_log
    assert run_train(_click_cfg(tiny, logs, tmp_path / "model")) == 0
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    feedback = metrics["feedback"]
    assert feedback["test_sessions_left_out"] > 0
    assert feedback["sessions"] + feedback["test_sessions_left_out"] == 400
    assert not feedback["counterfactual_test"] and feedback["propensity_method"] == "swap"
    assert metrics["trained_on"].startswith(f"clicks from {feedback['sessions']} logged sessions")
    assert metrics["trained_on"].endswith("tested on judgments")
    assert metrics["test"]["fusion"]["queries"] == metrics["test"]["zero_shot_rrf"]["queries"]
    # the first N sessions only: a learning curve by sample size; more than there are is one sentence
    short = dataclasses.replace(_click_cfg(tiny, logs, tmp_path / "short"), feedback_sessions=50)
    options = short.feedback_options()
    assert options is not None and options.sessions == 50
    with pytest.raises(FeedbackError, match="asked for"):
        run_train(dataclasses.replace(short, feedback_sessions=10_000))


def test_a_catalog_without_judgments_trains_from_clicks_and_tests_counterfactually(
    tiny: TinyPipeline, simulated_log: tuple[Path, dict], tmp_path: Path
) -> None:
    logs, _ = simulated_log
    items_only = tmp_path / "catalog"
    items_only.mkdir()
    shutil.copy(tiny.data / "items.jsonl", items_only / "items.jsonl")
    dataset = load_dataset(
        items_only, TextEncoder(tiny.encoder), num_candidates=20, feedback=FeedbackOptions(read_feedback_log(logs))
    )
    assert dataset.feedback is not None and dataset.feedback["counterfactual_test"]
    assert all(len(dataset.splits[split]) for split in ("train", "val", "test"))
    assert all(q.startswith("log-") for q in dataset.splits["test"].query_ids)
    # Only what a session showed has a label (clicked or not); of the rest of a list nothing is known.
    for lists in dataset.splits.values():
        assert (lists.labelled.sum(axis=1) <= simulate.TOP_K).all() and lists.labelled.any(axis=1).all()
        assert (lists.grades[~lists.labelled] == 0).all()
    cfg = _click_cfg(tiny, logs, tmp_path / "model", data_dir=items_only)
    assert run_train(cfg) == 0
    trained_on = json.loads((tmp_path / "model" / "metrics.json").read_text())["trained_on"]
    assert trained_on.endswith("held-out logged queries' click labels (counterfactual)")
