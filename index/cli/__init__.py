"""Command lines whose work crosses the layers of `index`, kept above them so that no layer imports a higher one:
`ingest` (exports a missing CLIP image tower, then ingests) and `validate` (the data format's checks with a trained
model's schema and the text encoder). Their old names, `python -m index.offline.ingest` and `python -m
index.data.validate`, hand over to them from their `__main__` blocks."""
