"""Measurement: the Locust load test and its SLO runner, benchmarks, the soak, and the process helpers tests share.

Never imported by the service. `loadtests.locustfile` is run by Locust as a file and imports gevent-patched Locust;
nothing else here imports it, so importing this package never monkey-patches a process."""
