"""The micro-batcher's Triton semantics (flush on size or delay, bounded queue, deadlines, drain on close), its
settings, and rankings that do not depend on batching."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.__main__ import settings_from_args
from service.app import create_app
from service.batcher import Batched, DeadlineExceeded, MicroBatcher, QueueFull, ShuttingDown, Then
from service.metrics import Metrics
from service.settings import Settings, SettingsError

from .conftest import serving_settings
from .toy_artifacts import ToyArtifacts


def _batcher(process=None, **kwargs) -> tuple[MicroBatcher[int, int], list[list[int]]]:
    seen: list[list[int]] = []

    def default(batch: list[Batched[int]]) -> list[int | Exception]:
        seen.append([b.item for b in batch])
        return [b.item * 10 for b in batch]

    batcher: MicroBatcher[int, int] = MicroBatcher(process or default, size_of=lambda _: 1, **kwargs)
    batcher.start()
    return batcher, seen


async def _submit_all(batcher: MicroBatcher[int, int], items: list[int], deadline: float | None = None) -> list:
    return await asyncio.gather(*(batcher.submit(i, deadline) for i in items), return_exceptions=True)


def test_concurrent_items_share_a_batch_and_results_stay_in_order() -> None:
    batcher, seen = _batcher(max_size=100, max_delay_us=50_000)
    assert asyncio.run(_submit_all(batcher, list(range(8)))) == [i * 10 for i in range(8)]
    assert seen == [list(range(8))]
    batcher.close()


def test_flush_at_max_size_without_waiting_for_the_delay() -> None:
    batcher, seen = _batcher(max_size=3, max_delay_us=5_000_000)
    started = time.perf_counter()
    asyncio.run(_submit_all(batcher, list(range(6))))
    assert time.perf_counter() - started < 2.0  # far below the 5 s delay
    assert [len(b) for b in seen] == [3, 3]
    batcher.close()


DELAY_S = 0.2  # long against event-loop stalls on a loaded 2-core machine, so the tests below cannot flake


def test_lone_item_flushes_after_the_delay_not_before() -> None:
    batcher, seen = _batcher(max_size=100, max_delay_us=int(DELAY_S * 1e6))

    async def one() -> tuple[int, float]:
        started = time.perf_counter()
        result = await batcher.submit(7)
        return result, time.perf_counter() - started

    result, waited = asyncio.run(one())
    assert result == 70 and seen == [[7]]
    # The flush is due at enqueue time + delay and the worker re-checks the clock on every wake-up, so never early.
    # No upper bound: how late a loaded machine wakes the worker is not the batcher's doing.
    assert waited >= DELAY_S - 1e-3
    batcher.close()


def test_items_arriving_within_the_delay_share_one_batch() -> None:
    batcher, seen = _batcher(max_size=100, max_delay_us=int(DELAY_S * 1e6))

    async def two_apart() -> list[int]:
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.005)
        second = asyncio.ensure_future(batcher.submit(2))
        return list(await asyncio.gather(first, second))

    assert asyncio.run(two_apart()) == [10, 20]
    assert seen == [[1, 2]]  # the first waited for the second instead of flushing alone
    batcher.close()


def test_full_queue_is_refused() -> None:
    def slow(batch: list[Batched[int]]) -> list[int | Exception]:
        time.sleep(0.2)
        return [b.item for b in batch]

    batcher, _ = _batcher(slow, max_size=1, max_delay_us=0, max_queue=2)
    results = asyncio.run(_submit_all(batcher, list(range(6))))
    assert any(isinstance(r, QueueFull) for r in results)
    assert any(r == 0 for r in results)
    batcher.close()


def test_expired_items_are_dropped_before_processing() -> None:
    batcher, seen = _batcher(max_size=100, max_delay_us=100_000)
    results = asyncio.run(_submit_all(batcher, [1, 2], deadline=time.perf_counter() + 0.01))
    assert all(isinstance(r, DeadlineExceeded) for r in results)
    assert seen == []
    batcher.close()


def test_a_failing_batch_fails_its_items_and_the_worker_survives() -> None:
    calls = {"n": 0}

    def flaky(batch: list[Batched[int]]) -> list[int | Exception]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return [b.item for b in batch]

    batcher, _ = _batcher(flaky, max_size=1, max_delay_us=0)
    assert isinstance(asyncio.run(_submit_all(batcher, [1]))[0], RuntimeError)
    assert asyncio.run(_submit_all(batcher, [2])) == [2]
    batcher.close()


def test_a_batcher_is_idle_only_with_nothing_queued_and_nothing_being_processed() -> None:
    """The encode stage reads `idle` of the other stages to decide whether MiniLM may take their cores."""
    inside, release = threading.Event(), threading.Event()

    def held(batch: list[Batched[int]]) -> list[int | Exception]:
        inside.set()
        release.wait(30)
        return [b.item for b in batch]

    batcher, _ = _batcher(held, max_size=1)
    assert batcher.idle
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(asyncio.run, _submit_all(batcher, [1]))
        assert inside.wait(30)
        assert not batcher.idle  # processing, nothing queued
        release.set()
        assert done.result(30) == [1]
    assert batcher.idle
    batcher.close()


def test_closed_batcher_refuses_new_work() -> None:
    batcher, _ = _batcher()
    batcher.close()
    assert isinstance(asyncio.run(_submit_all(batcher, [1]))[0], ShuttingDown)


def test_a_chained_item_goes_to_the_next_stage_from_the_worker_without_the_event_loop() -> None:
    """The encode stage hands a miss to the ranking stage itself: the ranking stage gets it while the event loop is
    blocked (here by a sleep on the loop's thread; in the service, by parsing other requests)."""
    ranking, seen = _batcher(max_size=100)
    encode, _ = _batcher(max_size=100)  # items x 10

    async def blocked_loop() -> int:
        task = asyncio.create_task(encode.submit(4, None, Then(ranking, lambda encoded: encoded + 1)))
        await asyncio.sleep(0)  # the task queues its item
        deadline = time.perf_counter() + 10.0
        while not seen and time.perf_counter() < deadline:
            time.sleep(0.01)  # the loop's thread, busy: no callback, no task step can run
        assert seen == [[41]], "the ranking stage did not get the item while the event loop was busy"
        return await task

    assert asyncio.run(blocked_loop()) == 410
    encode.close()
    ranking.close()


def test_a_chain_fails_its_caller_when_the_next_stage_refuses_or_the_first_fails() -> None:
    def slow(batch: list[Batched[int]]) -> list[int | Exception]:
        time.sleep(0.2)
        return [b.item for b in batch]

    ranking, _ = _batcher(slow, max_size=1, max_queue=1)
    encode, _ = _batcher(max_size=100)
    then: Then[int, int, int] = Then(ranking, lambda encoded: encoded)

    results = asyncio.run(_submit_all_then(encode, list(range(6)), then))
    assert any(isinstance(r, QueueFull) for r in results) and 0 in results
    ranking.close()
    ranking, seen = _batcher(max_size=100)
    failing, _ = _batcher(lambda batch: [ValueError("no embedding")] * len(batch))
    result = asyncio.run(_submit_all_then(failing, [1], Then(ranking, lambda encoded: encoded)))[0]
    assert isinstance(result, ValueError) and seen == []  # a failed first stage goes no further
    closed, _ = _batcher()
    closed.close()
    result = asyncio.run(_submit_all_then(encode, [1], Then(closed, lambda encoded: encoded)))[0]
    assert isinstance(result, ShuttingDown)
    for batcher in (encode, ranking, failing):
        batcher.close()


async def _submit_all_then(batcher: MicroBatcher[int, int], items: list[int], then: Then[int, int, int]) -> list:
    return await asyncio.gather(*(batcher.submit(i, None, then) for i in items), return_exceptions=True)


def test_max_batch_candidates_is_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK_MAX_BATCH", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        assert Settings(max_batch_candidates=64).max_batch_candidates == 64
        assert settings_from_args(["--max-batch-candidates", "16"]).max_batch_candidates == 16
        monkeypatch.setenv("RANK_MAX_BATCH_CANDIDATES", "32")
        assert Settings().max_batch_candidates == 32


@pytest.mark.parametrize("how", ["env", "kwarg", "cli"])
def test_the_old_max_batch_name_still_works_but_is_deprecated(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    monkeypatch.delenv("RANK_MAX_BATCH_CANDIDATES", raising=False)
    if how == "env":
        monkeypatch.setenv("RANK_MAX_BATCH", "48")
    with caplog.at_level(logging.WARNING, logger="service"), pytest.warns(DeprecationWarning, match="RANK_MAX_BATCH"):
        if how == "cli":
            settings = settings_from_args(["--max-batch", "48"])
        else:
            settings = Settings(max_batch=48) if how == "kwarg" else Settings()
    assert settings.max_batch_candidates == 48
    assert "use RANK_MAX_BATCH_CANDIDATES" in caplog.text


def test_the_new_name_wins_over_the_old_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK_MAX_BATCH", "48")
    with pytest.warns(DeprecationWarning, match="ignored"):
        assert Settings(max_batch_candidates=64).max_batch_candidates == 64


@pytest.fixture(scope="module")
def clients(toy: ToyArtifacts) -> Iterator[tuple[TestClient, TestClient]]:
    batched = create_app(serving_settings(toy, batching=True, max_delay_us=20_000))
    direct = create_app(serving_settings(toy, batching=False))
    with TestClient(batched) as a, TestClient(direct) as b:
        yield a, b


def test_rankings_identical_with_batching_on_and_off(toy: ToyArtifacts, clients) -> None:
    batched, direct = clients
    queries = [json.loads(line)["text"] for line in (toy.data / "queries.jsonl").read_text().splitlines()][:24]
    bodies = [{"query": q, "top_k": 10, "num_candidates": 30 + 5 * (i % 3)} for i, q in enumerate(queries)]
    bodies += [{"query": "red drink", "top_k": 5, "filters": {"glass": "coupe"}}]
    with ThreadPoolExecutor(max_workers=12) as pool:
        together = list(pool.map(lambda b: batched.post("/rank", json=b).json(), bodies))
    alone = [direct.post("/rank", json=b).json() for b in bodies]
    for a, b in zip(together, alone, strict=True):
        assert [x["id"] for x in a["results"]] == [x["id"] for x in b["results"]]
        assert [x["score"] for x in a["results"]] == pytest.approx([x["score"] for x in b["results"]], abs=1e-4)
    metrics = batched.get("/metrics").text
    batches = float(metrics.split("rank_batch_requests_count ")[1].split()[0])
    requests = float(metrics.split("rank_batch_requests_sum ")[1].split()[0])
    assert requests / batches > 1.5  # concurrent requests really were served together


def test_deadline_gets_504_and_is_counted(clients) -> None:
    batched, _ = clients
    r = batched.post("/rank", json={"query": "gin", "timeout_ms": 1})  # 20 ms batching delay > 1 ms deadline
    assert r.status_code == 504 and "timeout_ms" in r.json()["error"]
    assert "rank_deadline_drops_total 1.0" in batched.get("/metrics").text


def test_the_batcher_flushes_at_max_batch_candidates(
    toy: ToyArtifacts, clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests of 30 candidates queue behind a held ranker call; once it returns, the ranking stage takes them in
    ranker calls of at most max_batch_candidates (90) candidates: three requests together, then the fourth."""
    batched, _ = clients
    engine = batched.app.state.rank.engines.serving  # reuse the loaded artifacts: the batcher is under test
    app = create_app(serving_settings(toy, max_batch_candidates=90), engine=engine, metrics=Metrics())
    queries = [f"a gin drink for the batcher {i}" for i in range(5)]
    calls: list[int] = []  # candidates per ranker call
    inside, release = threading.Event(), threading.Event()
    score = engine.scoring_graph.run

    def held(*args: object, **kwargs: object) -> object:
        valid = args[4]  # ScoringGraph.run(prior, query, query_vectors, rows, valid, bm25, extras)
        assert isinstance(valid, np.ndarray)
        calls.append(int(valid.sum()))  # one entry per candidate
        if not inside.is_set():
            inside.set()
            release.wait(30)
        return score(*args, **kwargs)

    def rank(query: str, depth: int = 30) -> int:
        return client.post("/rank", json={"query": query, "num_candidates": depth}).status_code

    with TestClient(app) as client:
        assert app.state.rank.batcher.max_size == 90
        # Embedded now, so no encode stage in front of the batcher; at another depth, so no result is remembered.
        assert all(rank(query, depth=31) == 200 for query in queries)
        monkeypatch.setattr(engine.scoring_graph, "run", held)
        with ThreadPoolExecutor(5) as pool:
            first = pool.submit(rank, queries[0])
            assert inside.wait(30)  # the ranking thread is in the first request's ranker call
            rest = [pool.submit(rank, query) for query in queries[1:]]
            deadline = time.monotonic() + 30
            while app.state.rank.batcher.depth < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
            assert [f.result(30) for f in [first, *rest]] == [200] * 5
    assert calls == [30, 90, 30]


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--max-batch-candidates", "lots"], {}, "setting max_batch_candidates (RANK_MAX_BATCH_CANDIDATES): Input"),
        ([], {"RANK_ADMIN_TOKEN": "t"}, "settings: admin_token must be at least 16 characters"),
    ],
)
def test_a_bad_setting_is_one_sentence_that_names_it(
    argv: list[str], env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        settings_from_args(argv)
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
