"""Everything about a catalog, by role: `data` (the user data format), `runtime` (what the service loads; no torch),
`offline` (featurisation, bundle build, ingestion), `export` (the torch exporters) and `cli` (the command lines that
need more than one of them). What each may import is the table in tests/test_layout.py: `data` and `runtime` import
nothing of each other, `offline` builds on both, `export` on `offline`, `cli` on all."""
