"""Every DVC stage declares exactly the project code its command imports (DESIGN §7, "exact staleness").

The imports are read statically: an AST walk from the stage's ``python -m <module>``, through every ``import`` and
``from … import`` of project modules (at any depth: inside functions too), with the package ``__init__.py`` files
that Python runs on the way. Registries are plain imports (no module-path strings), and importlib is not used in
the project, so the walk sees every module a stage can load. Declared folders stand for every ``.py`` under them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGES = ("pipeline", "stages")


def _module_file(name: str) -> Path | None:
    """The file of project module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_packages(name: str) -> list[str]:
    """``a.b.c`` -> ``['a', 'a.b', 'a.b.c']``: importing a module runs its packages' ``__init__`` first."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _imported(path: Path, name: str) -> set[str]:
    """Project modules that the module ``name`` (file ``path``) imports, directly."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == \
                "import_module":
            raise AssertionError(f"{path}: importlib.import_module hides an import from this check; import it")
    return {module for module in found if _module_file(module) is not None}


def imported_files(entry: str) -> set[str]:
    """Repository-relative paths of every project file that ``python -m <entry>`` imports, transitively."""
    seen: set[str] = set()
    todo = _with_packages(entry)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for module in _imported(_module_file(name), name):
            todo.extend(_with_packages(module))
    return {str(_module_file(name).relative_to(REPO)) for name in seen}


def declared_files(deps: list[str]) -> set[str]:
    """The ``.py`` files of ``pipeline/`` and ``stages/`` that a stage's deps name (a folder: all under it)."""
    files: set[str] = set()
    for dep in deps:
        if not dep.startswith(tuple(f"{p}/" for p in PACKAGES)) and dep not in PACKAGES:
            continue
        path = REPO / dep
        assert path.exists(), f"declared dep {dep} does not exist"
        found = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        files.update(str(p.relative_to(REPO)) for p in found)
    return files


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _command_module(stage: dict) -> str:
    cmd = (stage.get("do") or stage)["cmd"]
    match = re.match(r"python -m ([\w.]+)", cmd)
    assert match, f"stage command {cmd!r} is not `python -m <module> ...`"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_declares_exactly_the_code_it_imports(name):
    stage = _stages()[name]
    deps = (stage.get("do") or stage)["deps"]
    imported, declared = imported_files(_command_module(stage)), declared_files(deps)
    assert not imported - declared, f"{name} imports but does not declare {sorted(imported - declared)}"
    assert not declared - imported, f"{name} declares but does not import {sorted(declared - imported)}"


def test_the_walk_sees_registries_and_lazy_imports():
    """The check itself: a registry's adapters (plain imports in a package __init__) and the torchrun worker (a
    module object named in the stage) are found."""
    assert {"pipeline/datasets/samm.py", "pipeline/datasets/__init__.py"} <= imported_files("stages.ingest_micro")
    assert "pipeline/pretrain_ddp.py" in imported_files("stages.pretrain")
    assert not any(f.startswith("pipeline/datasets") for f in imported_files("stages.finetune"))
    assert "pipeline/models/mmnet.py" not in imported_files("stages.pretrain")
