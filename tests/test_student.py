"""The distilled query encoder (training/student.py): what the service accepts as its query encoder, and the
distillation itself on the tiny pipeline (a student learns MiniLM's embeddings, is exported, and is gated through the
served path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.runtime.exported_model import ModelCard
from index.runtime.files import ArtifactError
from index.runtime.text_encoder import TextEncoder
from service.loading import load_engine
from service.metrics import Metrics
from service.protocol import RankRequest
from tests.toy_artifacts import ToyArtifacts

from .conftest import TinyPipeline, serving_settings


def _student_dir(toy: ToyArtifacts, tmp_path: Path, gate: dict[str, object]) -> Path:
    """The toy encoder directory, labelled a student with this gate verdict (its weights are the teacher's)."""
    directory = tmp_path / "student"
    shutil.copytree(toy.encoder, directory)
    info = json.loads((directory / "encoder.json").read_text())
    info["student"] = {"teacher": info["name"], "gate": gate}
    (directory / "encoder.json").write_text(json.dumps(info))
    return directory


def test_a_student_that_passed_its_gate_with_the_served_model_is_served(toy: ToyArtifacts, tmp_path: Path) -> None:
    version = ModelCard.load(toy.model).version
    student = _student_dir(toy, tmp_path, {"passed": True, "model_version": version})
    engine = load_engine(serving_settings(toy, query_encoder_dir=student), Metrics())
    assert engine.encoder.info["student"]["gate"]["passed"]
    assert engine.document_encoder is not engine.encoder  # /rerank documents stay the teacher's
    assert engine.serve_one(engine.prepare_rank(RankRequest(query="a gin drink", top_k=3))).ids


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ({"passed": False, "teacher_ndcg": 0.9, "student_ndcg": 0.8}, "did not pass its quality gate"),
        ({"passed": True, "model_version": "another"}, "gated with model another"),
    ],
)
def test_a_student_that_failed_or_was_gated_with_another_model_is_refused(
    toy: ToyArtifacts, tmp_path: Path, gate: dict[str, object], message: str
) -> None:
    student = _student_dir(toy, tmp_path, gate)
    with pytest.raises(ArtifactError, match=message):
        load_engine(serving_settings(toy, query_encoder_dir=student), Metrics())


@pytest.mark.integration
def test_distillation_learns_minilms_embeddings_and_records_its_gate(
    tiny: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One layer, two epochs on the tiny catalog: the student moves towards MiniLM (its held-out cosine beats the
    undistilled cut's), exports as an encoder directory, and the gate's verdict matches its exit code."""
    from training import student

    monkeypatch.setenv("RANK_REQUIRE_BEATS_BASELINE", "false")  # the tiny model does not beat the text baseline
    out = tmp_path / "student"
    args = ["--data", str(tiny.data), "--model", str(tiny.model), "--bundle", str(tiny.bundle)]
    code = student.main([*args, "--encoder", str(tiny.encoder), "--out", str(out), "--layers", "1", "--epochs", "2"])
    info = json.loads((out / "encoder.json").read_text())["student"]
    gate = info["gate"]
    assert code == (0 if gate["passed"] else student.GATE_FAILED)
    assert gate["passed"] == (gate["student_ndcg"] >= gate["teacher_ndcg"] - student.MAX_DROP)
    assert gate["model_version"] == ModelCard.load(tiny.model).version
    assert "held-out served nDCG@10" in capsys.readouterr().out

    from training.evaluate.data import load_eval_data

    queries = [q.text for q in load_eval_data(tiny.data, "test").queries]
    teacher = TextEncoder(tiny.encoder).encode(queries)
    distilled = TextEncoder(out).encode(queries)
    undistilled = student.student_embeddings(student.load_minilm(1), queries)
    cosine = (distilled * teacher).sum(1).mean()
    assert cosine > (undistilled * teacher).sum(1).mean() + 0.1
    assert info["held_out_cosine"]["mean"] == pytest.approx(cosine, abs=1e-3)
    assert np.allclose(np.linalg.norm(distilled, axis=1), 1.0, atol=1e-5)
