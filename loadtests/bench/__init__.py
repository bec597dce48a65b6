"""Benchmarks and their peers: what the service costs and how it compares, each a `python -m loadtests.bench.<name>`.

- `compare` (`python -m loadtests.bench`, `make bench`): the service against `peers/` (a naive PyTorch app, Ray
  Serve) with wrk and the open-loop generator; `traffic` (the request mixes and the wrk driver) and `systems`
  (starting each system) are its parts, shared with the soak and the Ray benchmark.
- `ann` (FAISS index families), `encoder` (the MiniLM query encoder), `lexical` (bm25s vs tantivy), `images` (image
  decoding and encoding, `make bench-images`), `shadow` (what shadow scoring costs the client).
- Ray: `ray_cluster` (a local Ray Serve of deploy/ray/serve.yaml, for these benchmarks and the Ray tests),
  `ray_serve` (the service against Ray Serve replicas), `ray_failover` (a replica killed and a hot swap under
  Locust load), `ray_ingest` (ingestion engines side by side).
- `gpu_check` (`make gpu-check`): the GPU figures in one command on a CUDA machine.

Like all of loadtests/, these may import anything (the service, training, index); only tests and loadtests import
them.
"""
