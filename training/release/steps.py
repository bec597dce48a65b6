"""The steps of a rollout (serving, train, export, bundle, offline gate, shadow, canary, promote), each a method of
`Rollout` that returns its figures or raises `Stopped` (a gate refused the candidate) or `RolloutError` (the rollout
cannot go on), and the JSON-lines log they append to. The order and the CLI are `training.release.cli`'s."""

from __future__ import annotations

import argparse
import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from training.release import promstats

ZERO_SHOT = ("minilm", "bm25", "rrf")


class RolloutError(RuntimeError):
    """The rollout cannot go on for a reason that is not the candidate's fault (exit 2)."""


class Stopped(RuntimeError):
    """A gate refused the candidate (exit 1); `figures` are what it measured."""

    def __init__(self, reason: str, figures: dict[str, Any]) -> None:
        super().__init__(reason)
        self.figures = figures


@dataclass
class Admin:
    """The running service's HTTP API, with the admin token."""

    url: str
    token: str
    timeout: float = 300.0

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=self.timeout)
        headers = {"content-type": "application/json", "authorization": f"Bearer {self.token}"}
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
            raw = response.read()
        except OSError as exc:
            raise RolloutError(f"the service at {self.url} did not answer {method} {path}: {exc}") from None
        finally:
            conn.close()
        return response.status, json.loads(raw) if raw else {}

    def ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        status, answer = self.call(method, path, body)
        if status != 200:
            message = answer.get("error") if isinstance(answer, dict) else answer
            raise RolloutError(f"{method} {path} answered HTTP {status}: {message}")
        return dict(answer)


@dataclass
class Step:
    """One line of the rollout log."""

    step: str
    status: str  # ok, stopped, failed, skipped
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass
class Rollout:
    """The state a rollout carries from step to step, and its log."""

    args: argparse.Namespace
    admin: Admin
    log_path: Path
    serving_version: str = ""
    serving_bundle: str = ""
    candidate_dir: Path | None = None
    candidate_version: str = ""
    steps: list[Step] = field(default_factory=list)

    def record(self, step: Step) -> None:
        self.steps.append(step)
        line = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "step": step.step,
            "status": step.status,
            "seconds": round(step.seconds, 2),
            "serving_model_version": self.serving_version,
            "candidate_model_version": self.candidate_version or None,
            "figures": step.figures,
            **({"reason": step.reason} if step.reason else {}),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as out:
            out.write(json.dumps(line) + "\n")
        shown = f"{step.status}" + (f": {step.reason}" if step.reason else "")
        print(f"[{step.step}] {shown} ({step.seconds:.1f} s)", flush=True)

    def run(self, name: str, action: Callable[[], dict[str, Any]]) -> None:
        started = time.monotonic()
        try:
            figures = action()
        except Stopped as exc:
            self.record(Step(name, "stopped", time.monotonic() - started, exc.figures, str(exc)))
            raise
        except RolloutError as exc:
            self.record(Step(name, "failed", time.monotonic() - started, {}, str(exc)))
            raise
        self.record(Step(name, "ok", time.monotonic() - started, figures))

    # -- the steps ---------------------------------------------------------------------------------------------

    def serving(self) -> dict[str, Any]:
        status = self.admin.ok("GET", "/admin/canary")
        if status["status"] != "no canary":
            raise RolloutError("a canary is already running: promote it or roll it back first")
        if self.admin.ok("GET", "/admin/shadow")["status"] != "no shadow":
            raise RolloutError("a shadow is already loaded: DELETE /admin/shadow first")
        self.serving_version, self.serving_bundle = status["model_version"], status["bundle_version"]
        card = _read_json(self.args.serving_model / "model_card.json", "--serving-model")
        manifest = _read_json(self.args.serving_bundle / "manifest.json", "--serving-bundle")
        if card.get("version") != self.serving_version or manifest.get("version") != self.serving_bundle:
            raise RolloutError(
                f"the service serves model {self.serving_version} with bundle {self.serving_bundle}, but "
                f"--serving-model/--serving-bundle hold {card.get('version')} and {manifest.get('version')}: "
                "point them at the artifacts the service runs"
            )
        return {"model_version": self.serving_version, "bundle_version": self.serving_bundle}

    def train(self) -> dict[str, Any]:
        from index.runtime.lexical import NO_ANALYSIS
        from training.cli import run_train
        from training.train import TrainConfig

        assert self.candidate_dir is not None
        # The candidate is served from the serving bundle re-projected (`bundle`), whose BM25 index stays as it is:
        # train with its lexical analysis, not one chosen anew.
        manifest = _read_json(self.args.serving_bundle / "manifest.json", "--serving-bundle")
        analysis = str(manifest.get("lexical", {}).get("analysis", NO_ANALYSIS))
        cfg = TrainConfig(data_dir=self.args.data, out_dir=self.candidate_dir, seed=self.args.seed, analysis=analysis)
        if run_train(cfg) != 0:
            raise Stopped("training ended with an error (see above)", {"seed": self.args.seed})
        return {"seed": self.args.seed, "out_dir": str(self.candidate_dir), "analysis": analysis}

    def export(self) -> dict[str, Any]:
        from training.export import run_export

        assert self.candidate_dir is not None
        if not (self.candidate_dir / "checkpoint.pt").exists() and (self.candidate_dir / "model_card.json").exists():
            # an existing export without its checkpoint: its card's recorded parity stands
            card = _read_json(self.candidate_dir / "model_card.json", "--model")
            self.candidate_version = str(card["version"])
            return {"reused": True, "model_version": self.candidate_version}
        if run_export(self.candidate_dir) != 0:
            raise Stopped("the ONNX export failed its parity check against PyTorch (see above)", {})
        card = _read_json(self.candidate_dir / "model_card.json", "the export")
        self.candidate_version = str(card["version"])
        return {"model_version": self.candidate_version, "parity_max_abs_diff": card["parity"]["max_abs_diff"]}

    def bundle(self) -> dict[str, Any]:
        from index.offline.bundle_writer import reproject_bundle
        from index.runtime.files import ArtifactError

        assert self.candidate_dir is not None
        try:
            bundle = reproject_bundle(self.args.serving_bundle, self.candidate_dir, self.candidate_dir / "bundle")
        except (ArtifactError, ValueError) as exc:
            raise Stopped(f"the serving bundle cannot be re-projected for the candidate: {exc}", {}) from None
        return {"bundle_version": bundle.version, "items": bundle.size}

    def offline_gate(self) -> dict[str, Any]:
        from training.evaluate.data import load_eval_data
        from training.evaluate.errors import EvaluateError
        from training.evaluate.scoring import run_systems
        from training.evaluate.served import load_in_process

        assert self.candidate_dir is not None
        args = self.args
        try:
            data = load_eval_data(args.data, args.split)
            serving = load_in_process(args.serving_bundle, args.serving_model, args.encoder, gate=False)
            candidate = load_in_process(self.candidate_dir / "bundle", self.candidate_dir, args.encoder, gate=False)
        except EvaluateError as exc:
            raise RolloutError(f"the offline gate cannot run: {exc}") from None
        ndcg: dict[str, float] = {}
        for name, served in (("serving", serving), ("candidate", candidate)):
            ndcg[name] = run_systems(data, ["served"], served=served).summary("served").ndcg_at_10
        analysis = serving.engine.bundle.lexical.analyzer.name  # BM25 as the service runs it
        zero_shot = run_systems(data, list(ZERO_SHOT), encoder=serving.engine.encoder, analysis=analysis)
        for system in ZERO_SHOT:
            ndcg[system] = zero_shot.summary(system).ndcg_at_10
        best = max(ZERO_SHOT, key=lambda s: ndcg[s])
        figures = {
            "queries": len(data.queries),
            "split": args.split,
            "ndcg@10": {k: round(v, 4) for k, v in ndcg.items()},
            "best_zero_shot": best,
            "tolerance": args.tolerance,
        }
        if ndcg["candidate"] < ndcg["serving"] - args.tolerance:
            raise Stopped(
                f"candidate nDCG@10 {ndcg['candidate']:.4f} is more than {args.tolerance} below the serving "
                f"model's {ndcg['serving']:.4f}",
                figures,
            )
        if not args.allow_below_zero_shot and ndcg["candidate"] <= ndcg[best]:
            raise Stopped(
                f"candidate nDCG@10 {ndcg['candidate']:.4f} does not beat the best zero-shot system ({best}, "
                f"{ndcg[best]:.4f})",
                figures,
            )
        return figures

    def shadow(self) -> dict[str, Any]:
        assert self.candidate_dir is not None
        args = self.args
        paths = {"model_dir": str(self.candidate_dir), "bundle_dir": str(self.candidate_dir / "bundle")}
        status, answer = self.admin.call("POST", "/admin/shadow", {"share": args.shadow_share, **paths})
        if status != 200:
            raise Stopped(f"the service refused the candidate as a shadow: {answer.get('error')}", {})
        deadline = time.monotonic() + args.shadow_seconds
        while True:
            summary = self.admin.ok("GET", "/admin/shadow")
            if summary["compared"] >= args.shadow_requests or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        figures = {k: summary[k] for k in ("compared", "shed", "failed", "mean", "rbo_p10", "shadow_total_ms")}
        figures["thresholds"] = {"min_overlap": args.min_overlap, "min_rbo": args.min_rbo}
        mean = summary["mean"]
        problem = ""
        if summary["compared"] < args.shadow_requests:
            problem = (
                f"only {summary['compared']} request pairs were compared in {args.shadow_seconds:g} s "
                f"(asked for {args.shadow_requests}): is there traffic?"
            )
        elif summary["failed"]:
            problem = f"{summary['failed']} shadow requests failed"
        elif mean["overlap_at_10"] < args.min_overlap:
            problem = f"mean overlap@10 {mean['overlap_at_10']} is below {args.min_overlap}"
        elif mean["rbo"] < args.min_rbo:
            problem = f"mean RBO {mean['rbo']} is below {args.min_rbo}"
        if problem:
            self.admin.call("DELETE", "/admin/shadow")
            raise Stopped(f"shadow comparison on live traffic: {problem}", figures)
        return figures

    def canary(self) -> dict[str, Any]:
        args = self.args
        before = promstats.scrape(self.admin.url)
        started = self.admin.ok("POST", "/admin/canary", {"share": args.canary_share})  # from the shadow
        if started.get("canary_model_version") != self.candidate_version:
            raise RolloutError(
                f"the canary started with model {started.get('canary_model_version')}, not the candidate"
            )
        time.sleep(args.canary_seconds)
        after = promstats.scrape(self.admin.url)
        figures = canary_figures(before, after, self.serving_version, self.candidate_version)
        figures.update({"share": args.canary_share, "max_latency_ratio": args.max_latency_ratio})
        problem = ""
        if figures["candidate_requests"] == 0:
            problem = "the canary served no request: is there traffic?"
        elif figures["5xx"]:
            problem = f"{figures['5xx']} responses were 5xx during the canary"
        elif min(figures["cached_requests"].values()) < args.min_latency_samples:
            figures["latency"] = f"not judged: fewer than {args.min_latency_samples} cached requests per version"
        elif (ratio := figures.get("cached_p99_ratio")) is not None and ratio > args.max_latency_ratio:
            problem = (
                f"the candidate's cached p99 is {ratio:.2f}x the serving model's (allowed {args.max_latency_ratio})"
            )
        if problem:
            self.admin.call("POST", "/admin/rollback")  # during a canary: ends it, the serving model keeps all
            raise Stopped(f"canary: {problem}", figures)
        return figures

    def promote(self) -> dict[str, Any]:
        done = self.admin.ok("POST", "/admin/canary/promote")
        return {"model_version": done["model_version"], "previous_model_version": done["previous_model_version"]}


def canary_figures(before: str, after: str, serving: str, candidate: str) -> dict[str, Any]:
    """Requests each version served, 5xx responses, and each version's cached /rank p99 server time (ms), over
    the two scrapes."""
    by_version = promstats.counter_deltas(after, before, "rank_model_requests_total", ("model_version",))
    requests = {version: by_version.get((version,), 0.0) for version in (serving, candidate)}
    by_status = promstats.counter_deltas(after, before, "rank_http_requests_total", ("status",))
    errors = sum(count for (status,), count in by_status.items() if status.startswith("5"))
    p99: dict[str, float | None] = {}
    cached: dict[str, int] = {}
    for version in (serving, candidate):
        labels = {"route": "/rank", "encoded": "no", "model_version": version}
        delta = promstats.delta(
            promstats.histogram_buckets(after, "rank_served_seconds", **labels),
            promstats.histogram_buckets(before, "rank_served_seconds", **labels),
        )
        cached[version] = int(delta.get(float("inf"), 0.0))
        value = promstats.histogram_quantile(0.99, delta) if delta else float("nan")
        p99[version] = None if value != value else round(value * 1000.0, 3)  # NaN: no cached request
    figures: dict[str, Any] = {
        "serving_requests": int(requests[serving]),
        "candidate_requests": int(requests[candidate]),
        "5xx": int(errors),
        "cached_requests": {"serving": cached[serving], "candidate": cached[candidate]},
        "cached_p99_ms": {"serving": p99[serving], "candidate": p99[candidate]},
    }
    serving_p99, candidate_p99 = p99[serving], p99[candidate]
    if serving_p99 and candidate_p99 is not None:
        figures["cached_p99_ratio"] = round(candidate_p99 / serving_p99, 3)
    return figures


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise RolloutError(f"{what}: {path} does not exist") from None
    except ValueError as exc:
        raise RolloutError(f"{what}: {path} is not valid JSON ({exc})") from None
