"""The traffic every benchmark sends: the request mixes (`Traffic`: cached, never-seen, Zipf with a never-seen tail),
the benchmark's /rank bodies, and wrk driven by a Lua script of a mix (`wrk_script`, `run_wrk`). The open-loop
generator draws the same mixes through `Bodies`."""

from __future__ import annotations

import bisect
import json
import random
import re
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Traffic:
    """A request mix: `tail` of the requests carry a never-seen query (a test query with a unique suffix: a cache
    miss that pays for MiniLM); the rest are the benchmark's queries, cycled in order, or drawn Zipf-like (s = 1.1,
    the load test's head) when `zipf`."""

    name: str
    tail: float
    zipf: bool


TRAFFIC = {
    t.name: t
    for t in (
        Traffic("cached", 0.0, False),
        Traffic("never-seen", 1.0, False),
        Traffic("mix 10%", 0.1, True),
        Traffic("mix 30%", 0.3, True),
    )
}
ZIPF_S = 1.1


def zipf_cumulative(n: int, s: float = ZIPF_S) -> list[float]:
    weights = [1.0 / rank**s for rank in range(1, n + 1)]
    total = sum(weights)
    out, running = [], 0.0
    for w in weights:
        running += w / total
        out.append(running)
    out[-1] = 1.0
    return out


def benchmark_bodies(queries: Path) -> list[dict]:
    """The /rank bodies of the benchmark's 100 queries: the last 100 of a queries.jsonl (the SYNTHETIC test split's
    tail), top 10 of 100 candidates."""
    texts = [json.loads(line)["text"] for line in queries.read_text().splitlines()]
    return [{"query": t, "top_k": 10, "num_candidates": 100} for t in texts[-100:]]


class Bodies:
    """The /rank bodies of a traffic mix, for the open-loop generator (the wrk script draws the same way)."""

    def __init__(self, bodies: list[dict], traffic: Traffic, seed: int = 0) -> None:
        self.bodies, self.traffic = bodies, traffic
        self.cumulative = zipf_cumulative(len(bodies))
        self.rng = random.Random(seed)

    def __call__(self, i: int) -> dict:
        if self.rng.random() < self.traffic.tail:
            base = self.rng.choice(self.bodies)
            return {**base, "query": f"{base['query']} {i} {self.rng.randrange(10**9)}"}
        if self.traffic.zipf:
            return self.bodies[bisect.bisect_left(self.cumulative, self.rng.random())]
        return self.bodies[i % len(self.bodies)]


def post(url: str, body: dict, timeout: float = 30.0) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
        return int(response.status)


def wrk_script(bodies: list[dict], path: Path, traffic: Traffic) -> None:
    """A wrk Lua script for `traffic` over `bodies` (see Traffic). Each wrk thread seeds its own generator and
    numbers its never-seen queries with its id, so no two threads send the same one."""
    quoted = ",\n".join(f"  [[{json.dumps(b)}]]" for b in bodies)
    texts = ",\n".join("  [[" + b["query"].replace('"', "").replace("\\", "").replace("]", "") + "]]" for b in bodies)
    cumulative = ", ".join(f"{c:.8f}" for c in zipf_cumulative(len(bodies))) if traffic.zipf else ""
    template = json.dumps({**bodies[0], "query": "QUERY"}).replace('"QUERY"', '"%s %d %d"')
    path.write_text(
        f"local bodies = {{\n{quoted}\n}}\nlocal texts = {{\n{texts}\n}}\n"
        f"local cumulative = {{{cumulative}}}\nlocal tail = {traffic.tail}\nlocal i = 0\nlocal threads = 0\n"
        "function setup(thread)\n  threads = threads + 1\n  thread:set('id', threads)\nend\n"
        "function init(args)\n  math.randomseed(id * 7919 + os.time())\nend\n"
        "request = function()\n  i = i + 1\n  local body\n"
        "  if math.random() < tail then\n"
        f"    body = string.format('{template}', texts[math.random(#texts)], id, i)\n"
        "  elseif #cumulative > 0 then\n"
        "    local r, k = math.random(), 1\n    while cumulative[k] < r do k = k + 1 end\n    body = bodies[k]\n"
        "  else\n    body = bodies[(i % #bodies) + 1]\n  end\n"
        '  return wrk.format("POST", "/rank", {["Content-Type"] = "application/json"}, body)\nend\n'
    )


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, script: Path, concurrency: int, duration: int) -> tuple[float, float, float, int]:
    threads = min(concurrency, 2)
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{duration}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"{url}/rank",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += (
        sum(int(n) for n in re.findall(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)[0])
        if "Socket errors" in out
        else 0
    )
    return _ms(latency["50"]), _ms(latency["99"]), rps, errors
