"""The load-test report: client-side figures from Locust, server-side figures from two /metrics scrapes, side by side.

Inputs, all in the run's directory: Locust's CSVs (`locust_stats.csv`, `locust_failures.csv`,
`locust_stats_history.csv` from --csv-full-history), the locustfile's `samples.csv` (every request's exact client
time and the server's Server-Timing `total`), and the Prometheus exposition scraped before and after the run.
Outputs: `summary.md`, `summary.json` and two PNG charts.

Server-side quantiles come from histogram bucket *deltas* between the two scrapes, interpolated as PromQL's
`histogram_quantile` does, so they describe exactly the run's window, as `rate(...[window])` would. Every metric
family is optional: a service that does not export one gets "n/a" in that row, never an error.

One job a module: `inputs` reads the run's files (Locust's CSVs, the samples), `figures` computes every figure
from them and the scrapes and checks the SLOs (`build_report`), `markdown` renders summary.md and writes it with
summary.json (`write_report`), `charts` draws the PNGs (`write_charts`). `loadtests.run` calls them in that order.
"""
