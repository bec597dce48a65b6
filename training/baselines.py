"""Baselines scored on the same candidate lists as the fusion ranker.

- text_cosine: MiniLM cosine of query and item title (also what the candidate generator ranks by).
- lambdamart: LightGBM LambdaMART on the same inputs as the fusion ranker, as flat features: the query/title
  cosine, the encoded attributes, and PCA-reduced query, title and image embeddings.
"""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
from sklearn.decomposition import PCA

from index.featurize import CandidateFeatures
from training.dataset import RankingLists

log = logging.getLogger(__name__)


def text_cosine_scores(features: CandidateFeatures, lists: RankingLists) -> np.ndarray:
    """(Q, K) cosine of each query with each candidate's title embedding (both unit norm)."""
    return np.einsum("qkd,qd->qk", features.text[lists.candidates], lists.query_emb)


class LambdaMART:
    """LightGBM lambdarank over flat (query, candidate) features; early-stopped on validation nDCG@10."""

    def __init__(self, components: int = 32, seed: int = 0) -> None:
        self.components = components
        self.seed = seed
        self.pca: dict[str, PCA] = {}
        self.model: lgb.LGBMRanker | None = None

    def _rows(self, features: CandidateFeatures, lists: RankingLists) -> np.ndarray:
        q, k = lists.candidates.shape
        cand = lists.candidates.reshape(-1)
        query = np.repeat(lists.query_emb, k, axis=0)
        parts = [
            text_cosine_scores(features, lists).reshape(-1, 1),
            features.attrs[cand],
            self.pca["query"].transform(query),
            self.pca["text"].transform(features.text[cand]),
            self.pca["image"].transform(features.image[cand]),
        ]
        return np.hstack(parts).astype(np.float32)

    def fit(self, features: CandidateFeatures, train: RankingLists, val: RankingLists) -> LambdaMART:
        self.pca = {
            "query": PCA(self.components, random_state=self.seed).fit(train.query_emb),
            "text": PCA(self.components, random_state=self.seed).fit(features.text),
            "image": PCA(self.components, random_state=self.seed).fit(features.image),
        }
        k = train.candidates.shape[1]
        self.model = lgb.LGBMRanker(
            objective="lambdarank",
            n_estimators=600,
            learning_rate=0.05,
            num_leaves=31,
            min_child_samples=20,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            random_state=self.seed,
            n_jobs=2,
            verbose=-1,
        )
        self.model.fit(
            self._rows(features, train),
            train.grades.reshape(-1),
            group=[k] * len(train),
            eval_X=(self._rows(features, val),),
            eval_y=(val.grades.reshape(-1),),
            eval_group=[[val.candidates.shape[1]] * len(val)],
            eval_at=[10],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
        log.info("LambdaMART: %d trees (early-stopped on val nDCG@10)", self.model.best_iteration_)
        return self

    def scores(self, features: CandidateFeatures, lists: RankingLists) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("LambdaMART.scores called before fit")
        return np.asarray(self.model.predict(self._rows(features, lists))).reshape(lists.candidates.shape)
