"""The layout's dependency rules, checked.

Dependencies point one way. A layer is a top-level package, except that `index` is cut into its folders; a module
of a layer may import, of this project's code, its own layer and the layers (or single modules) its row names, and
nothing else. Imports inside functions count as much as those at the top of a file.

| layer           | may import (of this project)                                                                |
|-----------------|---------------------------------------------------------------------------------------------|
| `model`         | nothing                                                                                     |
| `index`         | nothing                                                                                     |
| `index.data`    | `model`                                                                                     |
| `index.runtime` | `model.schema`                                                                              |
| `index.offline` | `model`, `index`, `index.data`, `index.runtime`                                             |
| `index.export`  | `model`, `index`, `index.data`, `index.runtime`, `index.offline`                            |
| `index.cli`     | `model`, `index`, `index.data`, `index.runtime`, `index.offline`, `index.export`            |
| `service`       | `model.schema`, `index.runtime`                                                             |
| `training`      | `model`, `index`, `index.data`, `index.runtime`, `index.offline`, `index.export`, `service` |
| `loadtests`     | everything                                                                                  |

`model` is the ranker and its feature schema (no I/O); `index` alone is `index/cli_logging.py`, the logging set-up
every command line shares; `index.data` is the user data format; `index.runtime` and `service` are what the service
image carries (of `model`, only `model/schema.py`); `index.cli` holds the command lines that cross index's layers.

So `model` imports nothing of ours; `index.data` is below `index.runtime`, which does not import it; the service
never imports `training`, `loadtests`, `index.offline`, `index.export` or `index.data`; nothing but `loadtests`
imports `loadtests`. `index.export` builds on `index.offline` (an exporter checks its graph with the code that will
run it), never the other way; a command line that needs both (exporting a missing CLIP tower before ingesting)
lives in `index.cli`. `training` may run the service in process (served-path evaluation).

Also checked: no import cycle, between modules or between layers; no private name (`_x`) imported from another
module; every top-level package has a row. A module's `if __name__ == "__main__":` block is its command-line
entry point, not part of the module: Python runs it as the module `__main__`, which nothing imports, so its imports
are no edge of the graph. It may only import a `main` to hand over to (e.g. `python -m index.data.validate` hands
over to `index.cli.validate`), never from its own module.

And the service image: the service imports only what the Dockerfile's runtime stage copies, and nothing that needs
torch, PIL or the training stack.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The folders of `index` that are layers of their own; a module of `index` in none of them is of the layer `index`.
INDEX_LAYERS = ("index.data", "index.runtime", "index.offline", "index.export", "index.cli")
# Third-party packages the serving image does not install (the `cpu` extra has none of them; `onnx` is a base
# dependency: the service composes its scoring graph with it).
NOT_IN_THE_IMAGE = ("torch", "PIL", "transformers", "sentence_transformers", "lightgbm", "sklearn", "tqdm")
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


def _context_copies() -> list[str]:
    """The source paths every stage of the Dockerfile COPYs from the build context."""
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def test_the_build_context_is_what_the_dockerfile_copies_and_nothing_else() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*", ".dockerignore starts by leaving everything out"
    let_in = {r[1:] for r in rules if r.startswith("!")}
    needed = {source.split("/")[0] for source in _context_copies()}
    assert needed <= let_in, f".dockerignore leaves out {sorted(needed - let_in)}, which the Dockerfile copies"
    assert not let_in & {".venv", "artifacts", "data", "build", "reports"}


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


@dataclass(frozen=True)
class Import:
    """One import statement's reach into this project: `source` (a module) imports `target` (a module)."""

    source: str
    target: str
    name: str | None  # the name taken by `from target import name`; None for `import target`
    file: Path
    line: int
    entry_point: bool  # inside `if __name__ == "__main__":`

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    def __str__(self) -> str:
        taken = f" ({self.name})" if self.name else ""
        return f"{self.where()}: {self.source} imports {self.target}{taken}"


def _packages() -> list[str]:
    """This project's top-level packages: every folder beside tests/ with an __init__.py."""
    return sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests")


@cache
def _modules() -> dict[str, Path]:
    """Every module of this project by dotted name (a package by its own name)."""
    modules = {}
    for package in _packages():
        for file in sorted((ROOT / package).rglob("*.py")):
            parts = file.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def _is_entry_point(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _resolve(name: str) -> str | None:
    """The module of ours that `import name` loads last: name itself, or its longest prefix that is a module."""
    modules = _modules()
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _walk(module: str, node: ast.AST, entry_point: bool = False) -> Iterator[Import]:
    file = _modules()[module]
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            for alias in child.names:
                target = _resolve(alias.name)
                if target is not None:
                    yield Import(module, target, None, file, child.lineno, entry_point)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if file.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - child.level + 1] + ([base] if base else []))
            for alias in child.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in _modules() else _resolve(base)
                if target is not None:
                    name = None if target == submodule else alias.name
                    yield Import(module, target, name, file, child.lineno, entry_point)
        yield from _walk(module, child, entry_point or _is_entry_point(child))


@cache
def _imports() -> tuple[Import, ...]:
    """Every import of a module of ours by a module of ours, at any depth (in functions, try blocks, ...)."""
    return tuple(
        imp for module, file in _modules().items() for imp in _walk(module, ast.parse(file.read_text(), str(file)))
    )


def _edges() -> list[Import]:
    """The import graph's edges: an entry-point block runs as `__main__`, which nothing imports, so it adds none."""
    return [imp for imp in _imports() if not imp.entry_point and imp.target != imp.source]


def layer_of(module: str) -> str:
    """The layer of a module: its folder of `index` (INDEX_LAYERS), else its top-level package."""
    for layer in INDEX_LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    return module.split(".")[0]


@cache
def _rules() -> dict[str, frozenset[str]]:
    """The table of this module's docstring: layer -> the layers and modules it may import ("everything": all)."""
    rules = {}
    for row in re.findall(r"^\| `([\w.]+)` +\| (.+?) +\|$", __doc__ or "", flags=re.MULTILINE):
        layer, allowed = row
        rules[layer] = frozenset(re.findall(r"`([\w.]+)`", allowed)) | ({"*"} if allowed == "everything" else set())
    return rules


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected component of more than one node (Tarjan, then BFS)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        start = min(component)
        paths = deque([[start]])
        while paths:  # breadth first within the component: the first path back to `start` is a shortest cycle
            path = paths.popleft()
            following = sorted(graph[path[-1]] & component)
            if start in following:
                cycles.append([*path, start])
                break
            paths.extend([*path, n] for n in following if n not in path)
    return cycles


def _explain(cycle: list[str], witness: dict[tuple[str, str], Import]) -> str:
    steps = "\n".join(f"    {witness[a, b]}" for a, b in zip(cycle, cycle[1:]))
    return f"{' -> '.join(cycle)}, because\n{steps}"


def test_there_is_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    witness: dict[tuple[str, str], Import] = {}
    for imp in _edges():
        graph.setdefault(imp.source, set()).add(imp.target)
        witness.setdefault((imp.source, imp.target), imp)
    cycles = _cycles(graph)
    assert not cycles, "import cycles between modules:\n" + "\n".join(_explain(c, witness) for c in cycles)


def test_there_is_no_import_cycle_between_layers() -> None:
    graph: dict[str, set[str]] = {}
    witness: dict[tuple[str, str], Import] = {}
    for imp in _edges():
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source != target:
            graph.setdefault(source, set()).add(target)
            witness.setdefault((source, target), imp)
    cycles = _cycles(graph)
    assert not cycles, "import cycles between layers:\n" + "\n".join(_explain(c, witness) for c in cycles)


def test_every_package_and_index_folder_is_a_layer_with_a_rule() -> None:
    layers = {layer_of(module) for module in _modules()}
    assert set(INDEX_LAYERS) <= layers, f"INDEX_LAYERS names folders that are gone: {set(INDEX_LAYERS) - layers}"
    missing = sorted(layers - set(_rules()))
    assert not missing, f"no row in tests/test_layout.py's table says what {missing} may import: add one"
    unknown = sorted({a for allowed in _rules().values() for a in allowed} - layers - set(_modules()) - {"*"})
    assert not unknown, f"the table names {unknown}, which is no layer or module"


def test_every_import_follows_the_layer_table() -> None:
    rules = _rules()
    broken = []
    for imp in _edges():
        source, target = layer_of(imp.source), layer_of(imp.target)
        allowed = rules.get(source, frozenset())
        if source != target and not {"*", target, imp.target} & allowed:
            names = ", ".join(f"`{a}`" for a in sorted(allowed)) or "nothing of ours"
            broken.append(f"{imp}: {source} may import only {names}")
    assert not broken, "imports against the layer table (tests/test_layout.py):\n" + "\n".join(broken)


def test_no_private_name_is_imported_from_another_module() -> None:
    """Public names between modules, private names within one: `from a.b import _x` reaches into a.b's internals
    (a name another module needs is public; give it a public name, or move it where both can import it)."""

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    taken = [
        imp
        for imp in _imports()
        if imp.source != imp.target
        and ((imp.name is not None and private(imp.name)) or any(private(p) for p in imp.target.split(".")))
    ]
    assert not taken, "private names imported from another module:\n" + "\n".join(f"    {imp}" for imp in taken)


def test_an_entry_point_block_only_hands_over_to_a_main() -> None:
    """`if __name__ == "__main__":` may import a `main` to run (the command line of a library module that lives a
    layer up), never anything else and never from its own module: a class it needs under its module's name (one
    that Ray or pickle finds by module path) belongs in a module that is never run as `__main__`."""
    odd = [imp for imp in _imports() if imp.entry_point and (imp.name != "main" or imp.target == imp.source)]
    assert not odd, "entry-point blocks that do more than hand over to a main:\n" + "\n".join(f"    {i}" for i in odd)
