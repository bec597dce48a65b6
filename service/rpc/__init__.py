"""The gRPC API (`rank.proto`, package fusion_rank.v1): `Ranker.Rank` and `Ranker.Rerank` on the HTTP routes'
engine, batchers, deadlines and caches, with the standard health and reflection services (server.py); convert.py
turns messages into the HTTP API's request models and outcomes into replies. rank_pb2*.py are generated from the
.proto by `make proto`: never edit them by hand."""
