"""Baselines scored on the same candidate lists as the fusion ranker.

- text_cosine: MiniLM cosine of query and item text (title and text).
- two_tower: the candidate generator's own score, i.e. no second stage at all (the ranker must beat it to be
  worth its milliseconds).
- lambdamart: LightGBM LambdaMART on the same inputs as the fusion ranker, as flat features: the query/text
  cosine, the candidate generator's score, the zero-shot evidence (prior, lexical), the encoded attributes, and
  PCA-reduced query, text and image embeddings. A modality some items lack is fitted on the items that have it,
  reads 0 where missing, and adds its mask as a feature; one no item has is left out.
"""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
from sklearn.decomposition import PCA

from index.runtime.features import CandidateFeatures
from model.schema import IMAGE, MODALITIES, TEXT
from training.dataset import Dataset, RankingLists

log = logging.getLogger(__name__)


def text_cosine_scores(features: CandidateFeatures, lists: RankingLists) -> np.ndarray:
    """(Q, K) cosine of each query with each candidate's text embedding (both unit norm)."""
    return np.einsum("qkd,qd->qk", features.text[lists.candidates], lists.query_emb)


class LambdaMART:
    """LightGBM lambdarank over flat (query, candidate) features; early-stopped on validation nDCG@10."""

    def __init__(self, components: int = 32, seed: int = 0) -> None:
        self.components = components
        self.seed = seed
        self.pca: dict[str, PCA] = {}
        self.mask_columns: list[int] = []  # modalities present for some items and not others
        self.model: lgb.LGBMRanker | None = None

    def _fit_pca(self, matrix: np.ndarray, present: np.ndarray) -> PCA | None:
        """PCA over the rows that have the modality (a missing one's zero row would pull the components); None when
        fewer than two rows have it."""
        rows = matrix if present.all() else matrix[present]
        components = min(self.components, matrix.shape[1], len(rows))
        return PCA(components, random_state=self.seed).fit(rows) if len(rows) >= 2 else None

    def _reduced(self, name: str, matrix: np.ndarray, present: np.ndarray) -> list[np.ndarray]:
        pca = self.pca.get(name)
        if pca is None:
            return []
        return [pca.transform(matrix) * present[:, None]]

    def _rows(self, dataset: Dataset, lists: RankingLists) -> np.ndarray:
        features = dataset.features
        k = lists.candidates.shape[1]
        cand = lists.candidates.reshape(-1)
        query = np.repeat(lists.query_emb, k, axis=0)
        mask = features.mask[cand]
        parts = [
            text_cosine_scores(features, lists).reshape(-1, 1),
            lists.retrieval.reshape(-1, 1),
            lists.evidence.reshape(-1, 2),
            features.attrs[cand],
            *self._reduced("query", query, np.ones(len(query), dtype=bool)),
            *self._reduced("text", features.text[cand], mask[:, TEXT] > 0),
            *self._reduced("image", features.image[cand], mask[:, IMAGE] > 0),
            mask[:, self.mask_columns],  # no columns unless some items lack a modality that others have
        ]
        return np.hstack(parts).astype(np.float32)

    def fit(self, dataset: Dataset, train: RankingLists, val: RankingLists) -> LambdaMART:
        features = dataset.features
        present = features.mask > 0
        fitted = {
            "query": self._fit_pca(train.query_emb, np.ones(len(train.query_emb), dtype=bool)),
            "text": self._fit_pca(features.text, present[:, TEXT]),
            "image": self._fit_pca(features.image, present[:, IMAGE]),
        }
        self.pca = {name: pca for name, pca in fitted.items() if pca is not None}
        # A mask column that is the same for every item is no feature (and an extra column would change which
        # columns LightGBM samples, so a catalog with every modality keeps exactly its former features).
        self.mask_columns = [t for t in range(len(MODALITIES)) if 0 < present[:, t].sum() < len(present)]
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
            deterministic=True,  # the same table from the same seed, whatever the thread timing
            force_row_wise=True,
            n_jobs=2,
            verbose=-1,
        )
        self.model.fit(
            self._rows(dataset, train),
            _integer(train.grades),
            group=[k] * len(train),
            eval_X=(self._rows(dataset, val),),
            eval_y=(_integer(val.grades),),
            eval_group=[[val.candidates.shape[1]] * len(val)],
            eval_at=[10],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
        log.info("LambdaMART: %d trees (early-stopped on val nDCG@10)", self.model.best_iteration_)
        return self

    def scores(self, dataset: Dataset, lists: RankingLists) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("LambdaMART.scores called before fit")
        return np.asarray(self.model.predict(self._rows(dataset, lists))).reshape(lists.candidates.shape)


def _integer(grades: np.ndarray) -> np.ndarray:
    """LightGBM's lambdarank takes integer relevance labels: click labels (fractional grades) are rounded."""
    return np.rint(grades.reshape(-1)).astype(np.int64)
