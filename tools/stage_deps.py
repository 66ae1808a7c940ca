"""Write ``dvc.yaml``'s code deps from the stages' static imports: ``python -m tools.stage_deps [--check]``.

Every DVC stage declares exactly the project code its command imports (DESIGN §7, "exact staleness"). The imports
are read statically: an AST walk from the stage's ``python -m <module>``, through every ``import`` and
``from … import`` of project modules (at any depth: inside functions too), with the package ``__init__.py`` files
that Python runs on the way. ``importlib`` is refused everywhere but in the model registry
(:mod:`pipeline.models.registry`), which loads a model's module by name: a walk that reaches the registry adds the
modules of the models the stage can build, :func:`pipeline.models.registry.arm_model_names` of the command's
``--arm`` (MIACNet for the MIACNet arms; every model for the baseline arm, whose model is a param, and for a stage
of every arm). So a model module that a stage does not build is not its dep.

The command rewrites, in each stage's ``deps:`` list, the entries under ``pipeline/`` and ``stages/`` (sorted, one
file a line) and keeps every other line of ``dvc.yaml`` as it is: data deps, comments, anchors. A list shared
through a YAML anchor (``deps: &finetune_deps`` … ``deps: *finetune_deps``) is written once, and every stage that
uses it must run the same module and build the same models. ``--check`` writes nothing and exits 1 if the file is
not what it would write (``tests/test_stage_deps.py`` does the same).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

__all__ = ["PACKAGES", "command_models", "generate", "imported_files", "registry_modules"]

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
REGISTRY = "pipeline.models.registry"  # the one module that imports by name (its MODELS literal)
_CODE_DEP = re.compile(r"^\s*- (pipeline|stages)(/\S*)?\s*(#.*)?$")


def _module_file(name: str, root: Path = REPO) -> Path | None:
    """The file of project module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_packages(name: str) -> list[str]:
    """``a.b.c`` -> ``['a', 'a.b', 'a.b.c']``: importing a module runs its packages' ``__init__`` first."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def registry_modules() -> dict[str, str]:
    """Model name -> module of :data:`pipeline.models.registry.MODELS` (a torch-free import)."""
    from pipeline.models.registry import MODELS

    return {name: target.partition(":")[0] for name, target in MODELS.items()}


def _imported(path: Path, name: str, root: Path) -> set[str]:
    """Project modules that the module ``name`` (file ``path``) imports, directly.

    Raises:
        ValueError: the module calls ``importlib.import_module``, which this walk cannot follow.
    """
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
                "import_module" and name != REGISTRY:
            raise ValueError(f"{path}: importlib.import_module hides an import from the stage-deps walk; import it")
    return {module for module in found if _module_file(module, root) is not None}


def imported_files(entry: str, root: Path = REPO, models: list[str] | None = None) -> set[str]:
    """Repository-relative paths of every project file that ``python -m <entry>`` imports, transitively.

    Args:
        entry: the stage's module (``stages.finetune``).
        root: the repository.
        models: where the walk reaches the registry, the models whose modules it adds (None: every model).

    Raises:
        ValueError: ``entry`` is not a project module, a module on the way but the registry uses
            ``importlib.import_module``, or ``models`` names a model the registry does not have.
    """
    lazy = registry_modules() if _module_file(REGISTRY, root) else {}
    unknown = set(models or ()) - set(lazy)
    if unknown:
        raise ValueError(f"models {sorted(unknown)} are not in {REGISTRY}.MODELS ({', '.join(lazy)})")
    if _module_file(entry, root) is None:
        raise ValueError(f"{entry} is not a module of {root} ({', '.join(PACKAGES)})")
    seen: set[str] = set()
    todo = _with_packages(entry)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found = _imported(_module_file(name, root), name, root)
        if name == REGISTRY:
            found |= {lazy[model] for model in (lazy if models is None else models)}
        for module in found:
            todo.extend(_with_packages(module))
    return {_module_file(name, root).relative_to(root).as_posix() for name in seen}


def _collapsed(files: set[str], root: Path) -> list[str]:
    """``files`` as dvc.yaml lists them: a package folder whose every ``.py`` is imported stands for them all.

    Sorted, the command's own ``stages/`` files first.
    """
    files = set(files)
    for package in sorted({Path(f).parent for f in files}, key=lambda p: len(p.parts)):
        if len(package.parts) < 2 or any(parent.as_posix() in files for parent in package.parents):
            continue  # a top-level package is never collapsed; a parent folder already stands for this one
        members = {p.relative_to(root).as_posix() for p in (root / package).rglob("*.py")
                   if "__pycache__" not in p.parts}
        if members <= files:
            files = (files - members) | {package.as_posix()}
    return sorted(files, key=lambda f: (not f.startswith("stages"), f))


def command_models(cmd: str) -> list[str]:
    """The models a stage command can build: :func:`pipeline.models.registry.arm_model_names` of its ``--arm``."""
    from pipeline.models.registry import arm_model_names  # torch-free

    arm = re.search(r"--arm\s+([\w-]+)", cmd)
    return arm_model_names(arm.group(1) if arm else None)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def generate(text: str, root: Path = REPO) -> str:
    """``dvc.yaml``'s ``text`` with each stage's code deps replaced by its command's :func:`imported_files`.

    Raises:
        ValueError: a stage's ``deps:`` comes before its ``cmd:``, a command is not ``python -m <module>``, or two
            stages that share an anchored deps list run different modules or build different models (the line is
            named).
    """
    lines = text.split("\n")
    out: list[str] = []
    stage = module = None
    models: list[str] = []
    anchors: dict[str, tuple[str, list[str]]] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^  [\w-]+:\s*(#.*)?$", line):  # a stage, two spaces under `stages:`
            stage, module = line.strip().split(":")[0], None
        cmd = re.match(r"^\s*cmd:\s*(.*)$", line)
        if cmd and stage:
            found = re.match(r"python -m ([\w.]+)", cmd.group(1))
            if not found:
                raise ValueError(f"dvc.yaml:{i + 1}: stage {stage}'s command {cmd.group(1)!r} is not "
                                 f"`python -m <module> ...`")
            module = found.group(1)
            models = command_models(cmd.group(1))
        deps = re.match(r"^(\s*)deps:\s*(?:([&*])([\w-]+))?", line)
        if deps and stage:
            if module is None:
                raise ValueError(f"dvc.yaml:{i + 1}: stage {stage}'s deps come before its cmd")
            if deps.group(2):
                anchor = deps.group(3)
                if anchors.setdefault(anchor, (module, models)) != (module, models):
                    raise ValueError(f"dvc.yaml:{i + 1}: stage {stage} ({module}, models {', '.join(models)}) shares "
                                     f"deps &{anchor} with a stage running {anchors[anchor][0]} (models "
                                     f"{', '.join(anchors[anchor][1])}): give it a list of its own")
            out.append(line)
            i += 1
            items: list[str] = []
            while i < len(lines) and lines[i].strip().startswith("- ") and _indent(lines[i]) > _indent(line):
                items.append(lines[i])
                i += 1
            if items:
                pad = " " * _indent(items[0])
                code = [f"{pad}- {path}" for path in _collapsed(imported_files(module, root, models), root)]
                others = [item for item in items if not _CODE_DEP.match(item)]
                out.extend(code + others)
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (1: ``--check`` found the file out of date)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if dvc.yaml is out of date")
    parser.add_argument("--dvc-yaml", type=Path, default=REPO / "dvc.yaml")
    args = parser.parse_args(argv)
    current = args.dvc_yaml.read_text()
    wanted = generate(current, args.dvc_yaml.resolve().parent)
    if current == wanted:
        print(f"{args.dvc_yaml}: code deps up to date")
        return 0
    if args.check:
        print(f"{args.dvc_yaml}: code deps out of date; run `python -m tools.stage_deps`", file=sys.stderr)
        return 1
    args.dvc_yaml.write_text(wanted)
    print(f"{args.dvc_yaml}: code deps rewritten from the stages' imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
