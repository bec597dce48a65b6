"""`make evaluate DATA=dir`: label-based quality of what is SERVED, beside zero-shot baselines on the same queries.

    .venv/bin/python -m training.evaluate --data data/synthetic                  # in process, default artifacts
    .venv/bin/python -m training.evaluate --data data/synthetic --url http://127.0.0.1:8000
    .venv/bin/python -m training.evaluate --data ../shared/data/cisi --systems minilm,bm25,rrf --split all --folds 5
    .venv/bin/python -m training.evaluate.crossval --data ../shared/data/cisi --folds 5   # `make crossval`

The dataset's items, queries and judgments are read with the project's one reader (index.data.readers); queries
without a split are hash-split 60/20/20 (`hash_split`), and `--split` picks the queries (test by default; `all` for
every query). Systems:

- served: each query goes through the real request path and the ranked ids come back: in process (the engine
  `service.loading.load_engine` builds from --bundle/--model/--encoder and the RANK_* environment, exactly as the
  service starts, quality gate included; `RANK_REQUIRE_BEATS_BASELINE=false` relaxes it), or with --url over HTTP
  POST /rank. Top-K is 100 (the service's max_top_k) and num_candidates the service's default unless given.
- minilm: zero-shot MiniLM cosine (the project's ONNX all-MiniLM-L6-v2) of the query and each item's full text
  (title and text joined), exact search over the WHOLE catalog.
- bm25: Okapi BM25 (the service's own, index.runtime.lexical, with its parameters `LexicalParams`: bm25s, k1 1.5,
  b 0.75, lowercase alphanumeric tokens, then --analysis: none, or a language's stop words and Snowball stems; by
  default the served bundle's) over the whole catalog's full texts.
- rrf: reciprocal-rank fusion of the minilm and bm25 rankings (k = index.runtime.hybrid.RRF_K, 60; each list taken
  to --rrf-depth).

Metrics are label-based with the project's pinned definitions (training.metrics): nDCG@10 (gain 2^g-1, log2
discount, ties averaged, ideal over ALL judged items of the query, so what a system missed counts against it;
queries without a judged relevant item excluded but counted), MRR (first item with grade >= 2 in the top K, 0 when
none; the mean over all queries, as the model card's) and recall@K (share of the query's grade >= 2 items in the top
K; queries without one excluded). One table is printed and a JSON report with per-query figures is written
(--out, default reports/evaluate-<UTC time>.json). Exit codes: 0 done, 2 it could not run (one sentence says why).

The package, one job a module:

- `data`: the judged dataset an evaluation reads (`load_eval_data`);
- `systems`: a `Ranking`, and the zero-shot searches (MiniLM, BM25, RRF) over the whole catalog;
- `served`: the served system, in process (the service's engine) or over HTTP;
- `scoring`: per-query metrics and their summaries (`run_systems` ranks and scores every system);
- `report`: the printed table and the JSON report;
- `cli`: `python -m training.evaluate`; `crossval`: `python -m training.evaluate.crossval`.

Dependencies: this package judges the served path in process, so it may import `service` (and `index`, and the
training core's metrics); the training core (dataset, train, export) never imports `service`, and nothing here is
imported by the service. Nothing here imports `loadtests`.
"""
