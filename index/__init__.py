"""Candidate generation: encoders, catalog ingestion, FAISS index build/load and the on-disk bundle format."""
