"""The library's packages by concern and the rules between them (docs/pipeline.md, "Where the code is").

Read over the same static import walk that writes dvc.yaml's code deps (``tools/stage_deps.py``): every ``import``
and ``from … import`` of a project module, at any depth, with the package ``__init__`` files Python runs on the way.
Each package sits on a layer and imports only from the layers below it, so no import runs back up and no two
packages import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO
from tools.stage_deps import imported_files

# lowest first; a package may import any package of a lower layer (and its own modules), never a higher one
LAYERS = ["core", "synth", "face", "models", "datasets", "data", "ingest", "train", "evaluate", "report", "serve",
          "orchestration"]
CORE = {"__init__", "config", "io", "sheets", "arms", "cards"}  # modules directly under pipeline/
PREFECT = ("prefect", "dask", "distributed")  # distributed: Dask's, not torch.distributed


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def package_of(module: str) -> str:
    """``pipeline.train.engine`` -> ``train``; a module directly under ``pipeline/`` -> ``core``."""
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in CORE):
        return "core"
    return parts[1]


def _direct_imports(path: Path) -> set[str]:
    """Every module name an ``import`` / ``from … import`` in ``path`` names (absolute imports only: the library
    has no relative ones, checked below)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}:{node.lineno}: relative import; the walk and these rules read absolute ones"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_arrows() -> set[tuple[str, str]]:
    """(importer, imported) pairs between the library's modules (a package ``__init__`` counts as its package)."""
    modules = _modules()
    return {(name, target) for name, path in modules.items() for target in _direct_imports(path)
            if target in modules and target != name}


def test_every_package_is_on_a_layer():
    packages = {package_of(name) for name in _modules()}
    assert packages == set(LAYERS), f"packages without a layer: {packages - set(LAYERS)}; layers without one: " \
                                    f"{set(LAYERS) - packages}"


def test_no_import_runs_back_up():
    """Every arrow goes to the same package or a lower layer: no cycle between packages."""
    upward = sorted(f"{a} -> {b}" for a, b in project_arrows()
                    if LAYERS.index(package_of(b)) > LAYERS.index(package_of(a)))
    assert not upward, "imports that run back up the layers:\n  " + "\n  ".join(upward)


@pytest.mark.parametrize("entry", ["pipeline.serve.cli", "pipeline.serve.predict"])
def test_serving_imports_neither_training_ingestion_nor_adapters(entry):
    """``ma2mi predict`` loads a final model and a clip; none of the training, ingestion or dataset code. The walk
    adds every model the registry can build (the card names which one)."""
    files = imported_files(entry)
    forbidden = sorted(f for f in files if f.startswith(("pipeline/train/", "pipeline/ingest/", "pipeline/datasets/")))
    assert not forbidden, f"{entry} imports {forbidden}"


def test_only_stages_and_orchestration_import_prefect_or_dask():
    offenders = []
    for name, path in _modules().items():
        if package_of(name) == "orchestration":
            continue
        offenders += [f"{name}: {imported}" for imported in _direct_imports(path)
                      if imported.split(".")[0] in PREFECT]
    assert not offenders, "Prefect / Dask outside pipeline/orchestration and stages/:\n  " + "\n  ".join(offenders)


def test_face_imports_no_model():
    """Decoding, alignment and optical flow run without torch models (ingestion imports them, serving too)."""
    for module in (m for m in _modules() if package_of(m) == "face"):
        files = imported_files(module)
        assert not [f for f in files if f.startswith(("pipeline/models/", "pipeline/train/"))], (module, files)


def test_the_rules_fail_on_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a face module that imports the trainer is reported."""
    assert LAYERS.index(package_of("pipeline.train.engine")) > LAYERS.index(package_of("pipeline.face.video"))
    arrows = project_arrows() | {("pipeline.face.video", "pipeline.train.engine")}
    upward = [(a, b) for a, b in arrows if LAYERS.index(package_of(b)) > LAYERS.index(package_of(a))]
    assert upward == [("pipeline.face.video", "pipeline.train.engine")]


def test_one_definition_of_each_public_name():
    """A public constant, function or class is defined in one module (the dataset adapters' protocol names, which
    every adapter defines by design, excepted)."""
    protocol = {"COLUMNS", "SHEET", "STANDARD_ANNOTATION", "frame_path", "read", "read_sheet", "CLASSES"}
    where: dict[str, list[str]] = {}
    for name, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined = [node.name]
            elif isinstance(node, ast.Assign):
                defined = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined = [node.target.id]
            else:
                continue
            for item in defined:
                adapter_protocol = package_of(name) == "datasets" and item in protocol
                if not item.startswith("_") and item not in {"log", "main"} and not adapter_protocol:
                    where.setdefault(item, []).append(name)
    twice = {item: modules for item, modules in where.items() if len(modules) > 1}
    assert not twice, f"defined more than once: {twice}"
