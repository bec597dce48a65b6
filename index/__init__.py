"""Everything about a catalog, by role: `data` (the user data format), `runtime` (what the service loads; no torch),
`offline` (featurisation, bundle build, ingestion) and `export` (the torch exporters)."""
