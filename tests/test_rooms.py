"""Which room may import which, read from the source (every import statement, those inside functions too):

- the service never imports training or loadtests;
- training's core (dataset, train, export, ...) never imports the service; training.evaluate and training.release
  may, since they judge the served path in process;
- nothing imports loadtests except tests and loadtests itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from training.paths import ROOT

# Parts of training that judge or ship what the service serves, and so may import it.
SERVED_PATH_JUDGES = ("training/evaluate", "training/release")


def _imports(path: Path) -> set[str]:
    """The top-level packages a module imports (relative imports are within its own package: left out)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _offenders(package: str, forbidden: set[str], allowed_under: tuple[str, ...] = ()) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if allowed_under and relative.startswith(allowed_under):
            continue
        if bad := sorted(_imports(path) & forbidden):
            out.append(f"{relative} imports {', '.join(bad)}")
    return out


def test_the_service_never_imports_training_or_loadtests() -> None:
    assert not _offenders("service", {"training", "loadtests"})


def test_the_training_core_never_imports_the_service() -> None:
    assert not _offenders("training", {"service"}, allowed_under=SERVED_PATH_JUDGES)


@pytest.mark.parametrize("package", ["model", "index", "service", "training"])
def test_only_tests_and_loadtests_import_loadtests(package: str) -> None:
    assert not _offenders(package, {"loadtests"})


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from service.settings import Settings\n    import loadtests.run\n")
    assert _imports(module) == {"service", "loadtests"}
