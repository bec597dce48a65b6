"""Load: the Locust load test and its request mix, the SLO runner and its report, the open-loop generator, the soak
and per-stage server time; benchmarks and their peers are in `loadtests.bench`; `process` starts and stops the
service for all of them and for the tests.

- `run` (`make loadtest`): Locust (`locustfile`, `mix`) against the service, judged by `slo.toml` (`slo`), written
  up by `report`; `openloop`: a constant-rate generator; `soak`: memory and latency over minutes; `server_time`:
  the service's own stage times per request.
- `process`: `start_service` (the one way a load tool, a benchmark or a test starts `python -m service`), a free
  port, waiting for readiness, stopping a process group.

Never imported by the service or by training; may import anything. `loadtests.locustfile` is run by Locust as a
file and imports gevent-patched Locust; nothing else here imports it, so importing this package never monkey-patches
a process."""
