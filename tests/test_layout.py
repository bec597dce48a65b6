"""The layout's dependency rules, checked: the service imports only what the service image copies, and nothing
that needs torch, PIL or the training stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Third-party packages the serving image does not install (the `cpu` extra has none of them).
NOT_IN_THE_IMAGE = ("torch", "PIL", "transformers", "sentence_transformers", "onnx", "lightgbm", "sklearn", "tqdm")
OWN_PACKAGES = ("index", "model", "service")


def _runtime_copies() -> list[str]:
    """The source paths the Dockerfile's runtime stage COPYs from the build context (not from the build stage)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("FROM") and line.endswith("AS runtime"))
    sources: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("FROM"):
            break
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def _service_imports() -> list[str]:
    """Every module loaded by importing the service's entry point and app, in a fresh interpreter."""
    code = "import json, sys; import service.__main__, service.app; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout)


def test_the_service_imports_no_torch_pil_or_training_stack() -> None:
    loaded = _service_imports()
    leaked = sorted({m.split(".")[0] for m in loaded} & set(NOT_IN_THE_IMAGE))
    assert not leaked, f"the service imports {leaked}, which its image does not carry"
    offline = [m for m in loaded if m.startswith(("index.offline", "index.export", "training", "model.fusion"))]
    assert not offline, f"the service imports offline code: {offline}"


def test_every_module_the_service_imports_is_copied_into_its_image() -> None:
    copies = _runtime_copies()
    assert "index/runtime" in copies and "service" in copies
    assert not [c for c in copies if c.startswith(("training", "index/offline", "index/export", "loadtests"))]
    own = [m for m in _service_imports() if m.split(".")[0] in OWN_PACKAGES]
    assert "index.runtime.bundle" in own and "model.schema" in own
    for module in own:
        relative = Path(*module.split("."))
        file = relative / "__init__.py" if (ROOT / relative).is_dir() else relative.with_suffix(".py")
        assert any(file.as_posix() == c or file.as_posix().startswith(c.rstrip("/") + "/") for c in copies), (
            f"the service imports {module} ({file}), which the Dockerfile's runtime stage does not copy"
        )
