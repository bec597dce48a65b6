"""`make rollout`: a new model from training to serving every request, one gated step at a time.

    .venv/bin/python -m training.release --url http://127.0.0.1:8000                 # train a candidate, roll it out
    .venv/bin/python -m training.release --url http://127.0.0.1:8000 --model DIR     # roll out an existing export

Steps, in order; the first that fails stops the rollout, says which and why, and undoes what it started:

1. serving: ask the running service which model and bundle it serves, and check that --serving-model and
   --serving-bundle (default: the RANK_* settings, as the service reads them) are those artifacts.
2. train (without --model): `training.cli train` into a new directory, with --seed.
3. export: ONNX export with the PyTorch parity check (`training.export.run_export`).
4. bundle: the serving bundle's features re-projected for the candidate (`index.offline.bundle_writer`): the
   catalog is not encoded again, and the candidate ranks exactly the items the service does.
5. offline gate: the candidate and the serving model, in this process, on the same held-out judged queries of
   --data (label-based nDCG@10); the candidate must not lose more than --tolerance (default 0.005) and must beat
   the best zero-shot system (MiniLM cosine, BM25, their RRF) unless --allow-below-zero-shot.
6. shadow: the candidate loads into the running service as a shadow and ranks live /rank traffic after the
   responses; once it has compared --shadow-requests request pairs (or --shadow-seconds pass), mean overlap@10
   and mean RBO must reach --min-overlap and --min-rbo, and no shadow request may have failed.
7. canary: the shadow's engine serves --canary-share percent of requests for --canary-seconds; it must serve
   some, answer none with a 5xx, and keep its cached-query p99 server time within --max-latency-ratio of the
   serving model's over the same seconds (judged once each version served --min-latency-samples cached requests).
8. promote: the canary serves everything, in one swap (the old engine is kept: `POST /admin/rollback`).

Each step appends one JSON line to --log (default reports/rollout.jsonl) with the versions, its seconds and its
figures; a summary table is printed at the end. Exit codes: 0 promoted, 1 a gate stopped the candidate, 2 the
rollout could not run (one sentence says why). The admin token comes from RANK_ADMIN_TOKEN.

The package, one job a module: `steps` (the gated steps and the rollout's log), `promstats` (the service's Prometheus
metrics, scraped and diffed: the canary's figures; the load tests read them with it too), `cli`
(`python -m training.release`).

Dependencies: the release judges the served path in process (the offline gate loads both engines, through
`training.evaluate`) and drives a running service over HTTP, so it may import `service`; the training core never
does, the service never imports `training`, and nothing here imports `loadtests`.
"""
