"""The load test's charts: latency.png and throughput.png from Locust's stats history and the sampled gauges."""

from __future__ import annotations

import math
from pathlib import Path

from loadtests.report.inputs import locust_history


def write_charts(run_dir: Path, gauges: list[tuple[float, float | None, float | None]]) -> list[str]:
    """latency.png and throughput.png from Locust's stats history (and the sampled gauges); returns file names."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history = locust_history(run_dir / "locust_stats_history.csv")
    if len(history.get("Timestamp", [])) < 2:
        return []
    start = history["Timestamp"][0]
    t = [x - start for x in history["Timestamp"]]

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for key, label in (("50%", "p50"), ("95%", "p95"), ("99%", "p99")):
        ax.plot(t, history[key], label=label)
    ax.set(xlabel="seconds since start", ylabel="response time, ms", title="Latency percentiles (Locust, all requests)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "latency.png", dpi=100)
    plt.close(fig)

    panels = 2 if gauges else 1
    fig, axes = plt.subplots(panels, 1, figsize=(9, 3.2 * panels + 1), sharex=True, squeeze=False)
    top = axes[0][0]
    top.plot(t, history["Requests/s"], label="requests/s")
    top.plot(t, history["Failures/s"], label="failures/s", color="tab:red")
    top.set(ylabel="per second", title="Throughput (Locust)")
    users = top.twinx()
    users.plot(t, history["User Count"], color="tab:gray", linestyle=":", label="users (right axis)")
    users.set_ylabel("users")
    users.set_ylim(bottom=0)
    users.yaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    handles = top.get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    top.legend(handles=handles, loc="lower right")
    if gauges:
        bottom = axes[1][0]
        gt = [g[0] for g in gauges]
        bottom.plot(gt, [math.nan if g[1] is None else g[1] for g in gauges], label="queue depth")
        bottom.plot(gt, [math.nan if g[2] is None else g[2] - 1 for g in gauges], label="in flight")
        bottom.set(ylabel="requests", title="Service gauges (sampled /metrics)")
        bottom.set_ylim(bottom=0)
        bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.grid(alpha=0.3)
        bottom.legend(loc="upper left")
    axes[-1][0].set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(run_dir / "throughput.png", dpi=100)
    plt.close(fig)
    return ["latency.png", "throughput.png"]
