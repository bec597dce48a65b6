"""Open-loop HTTP load: requests start at a constant arrival rate whether or not earlier ones have been answered,
and each request's latency counts from when the generator issued it on its schedule, not from when a connection was
free. A closed-loop tool (wrk, or Locust users that wait for answers) sends less when the server slows down and so
hides the queue a real arrival stream builds up (coordinated omission); this one does not: issuing never waits for
an answer.

The schedule itself is kept by asyncio's timers, which wake up to a millisecond late (the selector's timeout is in
whole milliseconds). That lateness is the generator's, not the server's, so it is not counted in a request's latency;
it is reported apart (`lag_p99_ms`, which `make bench` prints for every rate), and a large lag says the generator
could not keep its rate.

    result = open_loop("http://127.0.0.1:8000", "/rank", bodies, rate=200, seconds=10)

Standard library asyncio over keep-alive HTTP/1.1 connections (opened as needed, at most `max_connections`);
a request due while all of them are busy waits for one, and that wait is part of its latency.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np


@dataclass(frozen=True)
class OpenLoopResult:
    """What one rate did: the offered and achieved rates and the latency quantiles of the answered requests."""

    rate: float
    achieved: float  # answered requests per second of the run
    sent: int
    errors: int  # non-2xx answers and failed connections
    p50_ms: float
    p99_ms: float
    lag_p99_ms: float = 0.0  # how late the generator issued requests against its schedule (not in the latencies)


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, body: bytes
) -> int:
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"transfer-encoding") == b"chunked":
        # Ray Serve's proxy streams its answers chunked: read to the last chunk, or the rest of this answer would be
        # read as the start of the next one on the same connection.
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")  # no trailers are sent: the empty line that ends the message
    else:
        await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status


async def _run(
    url: str, path: str, body_for: Callable[[int], dict], rate: float, seconds: float, max_connections: int
) -> OpenLoopResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    opened = 0
    latencies: list[float] = []
    errors = 0

    async def one(issued: float, body: bytes) -> None:
        nonlocal opened, errors
        if idle.empty() and opened < max_connections:
            opened += 1
            try:
                idle.put_nowait(await asyncio.open_connection(host, port))
            except OSError:
                opened -= 1
                errors += 1
                return
        reader, writer = await idle.get()
        try:
            status = await _request(reader, writer, f"{host}:{port}", path, body)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            writer.close()
            opened -= 1
            return
        idle.put_nowait((reader, writer))
        latencies.append((time.perf_counter() - issued) * 1000.0)  # a wait for a free connection counts
        if not 200 <= status < 300:
            errors += 1

    tasks = []
    lags: list[float] = []
    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        body = json.dumps(body_for(i)).encode()
        issued = time.perf_counter()
        lags.append((issued - due) * 1000.0)
        tasks.append(asyncio.create_task(one(issued, body)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 30)
    elapsed = time.perf_counter() - start
    while not idle.empty():
        _, writer = idle.get_nowait()
        writer.close()
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"), float("nan"))
    lag = float(np.percentile(lags, 99)) if lags else 0.0
    return OpenLoopResult(rate, len(latencies) / elapsed, total, errors, float(p50), float(p99), lag)


def open_loop(
    url: str,
    path: str,
    body_for: Callable[[int], dict],
    rate: float,
    seconds: float,
    max_connections: int = 256,
) -> OpenLoopResult:
    """POST `body_for(i)` to `url + path` at `rate` requests per second for `seconds`."""
    return asyncio.run(_run(url, path, body_for, rate, seconds, max_connections))


def capacity(
    run: Callable[[float], OpenLoopResult], rates: list[float], max_p99_ms: float
) -> tuple[float, list[OpenLoopResult]]:
    """The highest of `rates` (tried in increasing order, stopping at the first miss) at which every request was
    answered without error and the p99 stayed under `max_p99_ms`; 0 when even the first misses."""
    best, tried = 0.0, []
    for rate in sorted(rates):
        result = run(rate)
        tried.append(result)
        if result.errors or not result.p99_ms < max_p99_ms:
            break
        best = rate
    return best, tried


def capacity_under(ladder: list[OpenLoopResult], max_p99_ms: float) -> float:
    """From a ladder of rates tried in increasing order, the highest before the first that missed `max_p99_ms` (or
    had an error); 0 when the first missed. Reads a ladder run against a looser threshold for a tighter one."""
    best = 0.0
    for result in sorted(ladder, key=lambda r: r.rate):
        if result.errors or not result.p99_ms < max_p99_ms:
            break
        best = result.rate
    return best
