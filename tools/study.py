"""The pre-registered study of ``docs/study.md``: ``python -m tools.study workspace|run|report``.

``workspace`` makes the development workspace (``make dev-demo`` calls it, then ``dvc repro`` there): a git clone
of this checkout's HEAD in ``.dev-seed/`` (ignored by git and DVC here), or that clone brought up to HEAD, whose
``params.yaml`` differs from this one in ``synthesize.seed`` only (:data:`DEV_SEED`; checked by parsing both).

``run`` trains every run of the plan (``docs/study/plan.yaml``) in a development workspace (``make dev-demo``):
one run per variant, arm, split (``validation``: :func:`pipeline.data.loso.validation_fold`, the selection
split; ``test``: the LOSO fold itself), fold and seed, with all labels. Each run is the project's own training run,
:func:`pipeline.train.fold_run.train_run`, on the workspace's ``data/micro`` and ``models/pretrain/encoder.pt``, with
the workspace's ``params.yaml`` plus the variant's overrides (validated as ``params.yaml`` is). The runs go to a
local Dask cluster of single-threaded worker processes, as the fold stages' do. A finished run leaves
``<out>/<variant>/<arm>/<split>/fold<k>/seed<s>.parquet`` (its held-out predictions, its last training epoch's
loss and accuracy, its wall time), so a killed study resumes where it stopped. A run that fails is reported by
name at the end, and the others still run.

``report`` pools each (variant, arm, split, seed)'s predictions over the folds into accuracy, UF1 and UAR. It pairs
each variant with ``default`` by seed, applies the selection rule of ``docs/study.md`` (:func:`decisions`), and writes
the results table below the marker line of ``docs/study.md`` (``--check``: exit 1 if the page is out of date).
The workspace's own ``dvc repro`` LOSO predictions (the default configuration's test split) join the table as
variant ``default``, split ``test``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MARKER", "Plan", "Run", "configuration", "decision_stages", "decisions", "encoder_ratios", "planned_runs",
           "pretrained_encoder", "report_markdown", "run_scores", "run_study", "study_scores", "variant_params"]

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "docs" / "study" / "plan.yaml"
DOC = REPO / "docs" / "study.md"
MARKER = "<!-- Below: written by `python -m tools.study report` from the study's runs; do not edit by hand. -->"
DEFAULT = "default"
DEV_SEED = 1  # the development renderer seed: every choice of the study is made on it, never on seed 0
SPLITS = ("validation", "test")


class Variant(BaseModel):
    """One variant of the plan: params overrides (dotted keys) and where it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stage: str
    arms: list[Literal["ma2mi", "scratch", "baseline"]] = Field(min_length=1)
    splits: list[Literal["validation", "test"]] = Field(min_length=1)
    set: dict[str, Any]


class Plan(BaseModel):
    """``docs/study/plan.yaml``: the seeds and folds every variant runs, and the variants in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seeds: list[int] = Field(min_length=1)
    folds: list[int] = Field(min_length=1)
    variants: dict[str, Variant]

    @classmethod
    def read(cls, path: Path) -> Plan:
        """Read and validate a plan file; :class:`pydantic.ValidationError` names the offending key."""
        plan = cls.model_validate(yaml.safe_load(path.read_text()))
        if DEFAULT not in plan.variants or plan.variants[DEFAULT].set:
            raise ValueError(f"{path}: the plan needs a variant {DEFAULT!r} with no overrides (the pairing reference)")
        return plan


def variant_params(raw: dict, overrides: dict[str, Any], where: str):
    """The workspace's params (``raw``: its ``params.yaml`` as a mapping) with ``overrides`` set, validated.

    Raises:
        KeyError: an override names a key that ``params.yaml`` does not have (``where`` names the variant).
        pipeline.config.ConfigError: the result is not valid params.
    """
    from pipeline.config import ConfigError, Params

    raw = json.loads(json.dumps(raw))  # a deep copy
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        new_arm_key = dotted.startswith("finetune.arm_recipes.") and len(parents) == 3  # an arm's change: may be new
        if not isinstance(node, dict) or (leaf not in node and not new_arm_key):
            raise KeyError(f"{where}: {dotted!r} is not a key of params.yaml")
        node[leaf] = value
    try:
        return Params.model_validate(raw)
    except Exception as err:
        raise ConfigError(f"{where}: {err}") from err


@dataclass(frozen=True)
class Run:
    """One training run of the study."""

    variant: str
    arm: str
    split: str
    fold: int
    seed: int

    @property
    def name(self) -> str:
        """How the run is named in progress and errors: ``'default ma2mi validation fold 3 seed 1'``."""
        return f"{self.variant} {self.arm} {self.split} fold {self.fold} seed {self.seed}"

    def result(self, out: Path) -> Path:
        """Its predictions file under the study's folder ``out`` (there once the run finished)."""
        return out / self.variant / self.arm / self.split / f"fold{self.fold}" / f"seed{self.seed}.parquet"


def planned_runs(plan: Plan, variants: Iterable[str] | None = None) -> list[Run]:
    """Every run of ``variants`` (default: all of the plan), in plan order.

    Raises:
        KeyError: a variant is not in the plan.
    """
    names = list(plan.variants) if variants is None else list(variants)
    unknown = [name for name in names if name not in plan.variants]
    if unknown:
        raise KeyError(f"variants {unknown} are not in the plan; known: {', '.join(plan.variants)}")
    return [Run(name, arm, split, fold, seed) for name in names for arm in plan.variants[name].arms
            for split in plan.variants[name].splits for fold in plan.folds for seed in plan.seeds]


def _train(run: Run, paths: Any, model: Any, recipe: Any, out: str) -> str:
    """One study run in a Dask worker (module level: it is pickled by name); ``paths`` are absolute."""
    from pipeline.io import write_parquet
    from pipeline.train.fold_run import train_run

    folder = run.result(Path(out)).parent
    state = folder / f"state_seed{run.seed}.pt"
    start = time.perf_counter()
    table = train_run(paths=paths, arm=run.arm, model=model, recipe=recipe, fold=run.fold, seed=run.seed,
                      budget=None, out=folder, state_path=state, validation=run.split == "validation")
    wall_s = time.perf_counter() - start
    curve = json.loads((folder / "dvclive" / f"seed{run.seed}" / "metrics.json").read_text())
    table["variant"], table["split"] = run.variant, run.split
    table["train_loss"], table["train_accuracy"] = curve["train"]["loss"], curve["train"]["accuracy"]
    table["wall_s"] = wall_s
    write_parquet(table, run.result(Path(out)))
    state.unlink(missing_ok=True)
    if run.split == "validation":  # selection runs keep only their predictions and curves
        (folder / f"model_seed{run.seed}.pt").unlink(missing_ok=True)
    return run.name


PRETRAIN_KEYS = ("pretrain.", "macro.")  # overrides that change what MA2MI pre-trains, hence the encoder


def pretrained_encoder(params: Any, overrides: dict[str, Any], out: Path) -> Path:
    """The folder of the encoder pre-trained with ``params`` (a variant's pre-training ``overrides``).

    ``<out>/pretrain-<hash of the overrides>/`` (``encoder.pt``, ``metrics.json``, ``dvclive/``, ``overrides.json``),
    trained now if it is not there yet. Its training state is saved as the stage's is, so a killed study resumes it.
    """
    import hashlib
    import logging

    from pipeline.io import atomic_dir
    from pipeline.train.distributed import resolve_device
    from pipeline.train.pretrain import train_and_save

    pretraining = {key: value for key, value in sorted(overrides.items()) if key.startswith(PRETRAIN_KEYS)}
    digest = hashlib.sha256(json.dumps(pretraining, sort_keys=True).encode()).hexdigest()[:12]
    folder = (out / f"pretrain-{digest}").resolve()
    if (folder / "encoder.pt").is_file():
        return folder
    params = params.model_copy(update={"paths": params.paths.model_copy(update={
        "pretrain_dir": folder, "checkpoint_dir": out.resolve() / f".pretrain-{digest}-state"})})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(f"pre-training for {pretraining} into {folder}", flush=True)
    with atomic_dir(folder) as tmp:
        train_and_save(params, tmp, resolve_device(params.pretrain.device), logging.getLogger("tools.study"))
        (tmp / "overrides.json").write_text(json.dumps(pretraining, indent=2) + "\n")
    return folder


def run_study(workspace: Path, plan: Plan, out: Path, variants: list[str] | None, workers: int) -> int:
    """Train every unfinished run of ``variants``; returns the number of failed runs (each printed by name).

    A variant of a later stage trains with the choices of the earlier stages (:func:`configuration`), which are
    taken from the finished runs; a variant that changes pre-training gets its own encoder first
    (:func:`pretrained_encoder`).

    Raises:
        RuntimeError: a variant's earlier stage is not decided (its runs have not all finished).
    """
    import dask
    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    from pipeline.arms import ARMS
    from pipeline.models.registry import arm_model
    from pipeline.orchestration.local_prefect import DASK_WORKER_CONFIG, LOOPBACK

    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    runs = planned_runs(plan, variants)
    todo = [run for run in runs if not run.result(out).exists()]
    print(f"{len(runs)} runs planned, {len(runs) - len(todo)} already finished, {len(todo)} to train", flush=True)
    if not todo:
        return 0
    scores = study_scores(workspace, out, plan)
    root = workspace.resolve()
    jobs: dict[tuple[str, str], tuple[Any, Any]] = {}
    for run in todo:
        if (run.variant, run.arm) in jobs:
            continue
        overrides = configuration(plan, scores, run.variant, run.arm)
        params = variant_params(raw, overrides, f"variant {run.variant} ({run.arm})")
        # absolute paths: the workers never change folder, so this checkout's code runs on the workspace's data
        params = params.model_copy(update={"paths": params.paths.model_copy(
            update={key: root / value for key, value in params.paths})})
        if ARMS[run.arm].pretrained and any(key.startswith(PRETRAIN_KEYS) for key in overrides):
            params = params.model_copy(update={"paths": params.paths.model_copy(
                update={"pretrain_dir": pretrained_encoder(params, overrides, out)})})
        shadowed = sorted(key for key in overrides if key.startswith("finetune.recipe.")
                          and key.rsplit(".", 1)[1] in getattr(params.finetune.arm_recipes, run.arm))
        if shadowed:
            raise ValueError(f"variant {run.variant} ({run.arm}): {shadowed} would not act, the workspace's "
                             f"finetune.arm_recipes.{run.arm} sets them; override finetune.arm_recipes.{run.arm}.<key>")
        print(f"{run.variant} / {run.arm}: {overrides or 'the workspace params'}", flush=True)
        jobs[(run.variant, run.arm)] = params, arm_model(run.arm, finetune=params.finetune, model=params.model)
    dask.config.set(DASK_WORKER_CONFIG)
    failed = 0
    with LocalCluster(n_workers=workers or len(os.sched_getaffinity(0)), threads_per_worker=1, processes=True,
                      host=LOOPBACK, dashboard_address=f"{LOOPBACK}:0") as cluster, Client(cluster) as client:
        futures = {}
        for run in todo:
            params, model = jobs[(run.variant, run.arm)]
            futures[client.submit(_train, run, params.paths, model, params.finetune.arm_recipe(run.arm),
                                  str(out.resolve()),
                                  key=f"study-{run.name}".replace(" ", "-"), pure=False)] = run
        for future in tqdm(as_completed(futures), total=len(futures), desc="study runs", unit="run"):
            if future.status == "error":
                failed += 1
                print(f"FAILED {futures[future].name}: {future.exception()!r}", file=sys.stderr, flush=True)
    return failed


def study_scores(workspace: Path, out: Path, plan: Plan) -> pd.DataFrame:
    """:func:`run_scores` of every finished run under ``out`` and of the workspace's own LOSO predictions."""
    files = sorted(out.glob("*/*/*/fold*/seed*.parquet"))
    frames = [pd.read_parquet(path) for path in files] + [_workspace_test_predictions(workspace)]
    frames = [frame for frame in frames if len(frame)]
    return run_scores(pd.concat(frames, ignore_index=True), len(plan.folds)) if frames else pd.DataFrame()


def set_dev_seed(text: str, seed: int) -> str:
    """``params.yaml``'s text with ``synthesize.seed`` set to ``seed``; every other line and comment kept.

    Raises:
        ValueError: the text has no ``seed:`` line in its ``synthesize:`` section.
    """
    lines = text.splitlines(keepends=True)
    section = None
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith((" ", "#")):
            section = line.split(":")[0]
        elif section == "synthesize" and line.startswith("  seed:"):
            comment = line[line.index("#"):] if "#" in line else "\n"
            lines[i] = f"  seed: {seed}" + ("  " + comment if "#" in line else comment)
            return "".join(lines)
    raise ValueError("params.yaml: no 'seed:' key in the synthesize section")


def make_workspace(workspace: Path, seed: int = DEV_SEED) -> None:
    """Clone (or fast-forward) this checkout's HEAD into ``workspace`` with ``synthesize.seed: seed``.

    Raises:
        subprocess.CalledProcessError: git failed (e.g. the clone has local commits that HEAD does not have).
        RuntimeError: the workspace's params differ from this checkout's in more than ``synthesize.seed``.
    """
    import subprocess

    from pipeline.config import load_params

    if not (workspace / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(workspace)], check=True)
    else:
        subprocess.run(["git", "-C", str(workspace), "checkout", "--quiet", "--", "params.yaml"], check=True)
        subprocess.run(["git", "-C", str(workspace), "pull", "--quiet", "--ff-only", str(REPO), "HEAD"], check=True)
    params_file = workspace / "params.yaml"
    params_file.write_text(set_dev_seed(params_file.read_text(), seed))
    ours, theirs = load_params(REPO / "params.yaml").model_dump(), load_params(params_file).model_dump()
    theirs["synthesize"]["seed"] = ours["synthesize"]["seed"]
    if ours != theirs:
        raise RuntimeError(f"{params_file} differs from {REPO / 'params.yaml'} in more than synthesize.seed")
    venv = workspace / ".venv"
    if not venv.exists() and (REPO / ".venv").exists():
        venv.symlink_to(REPO / ".venv")  # the same environment: `make dev-demo` runs this checkout's install
    print(f"{workspace}: HEAD of {REPO} with synthesize.seed: {seed}")


def _workspace_test_predictions(workspace: Path) -> pd.DataFrame:
    """The workspace's own ``dvc repro`` LOSO predictions (all labels) as variant ``default``, split ``test``."""
    from pipeline.config import load_params

    params = load_params(workspace / "params.yaml")
    frames = []
    for path in sorted((workspace / params.paths.finetune_dir).glob("*/fold*/predictions.parquet")):
        table = pd.read_parquet(path)
        table = table[table["label_budget"] == "all"].copy()
        fold_dir = path.parent
        curves = {seed: json.loads((fold_dir / "dvclive" / f"seed{seed}" / "metrics.json").read_text())["train"]
                  for seed in table["seed"].unique()}
        table["train_loss"] = table["seed"].map(lambda s, c=curves: c[s]["loss"])
        table["train_accuracy"] = table["seed"].map(lambda s, c=curves: c[s]["accuracy"])
        table["wall_s"] = np.nan  # not measured per run by the stage
        table["variant"], table["split"] = DEFAULT, "test"
        table["arm"] = fold_dir.parent.name
        frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_scores(predictions: pd.DataFrame, n_folds: int) -> pd.DataFrame:
    """One row per (variant, arm, split, seed) whose predictions cover all ``n_folds`` folds.

    Columns: the keys, ``accuracy``, ``uf1``, ``uar`` (pooled over folds), ``train_accuracy`` and ``train_loss``
    (last epoch, mean over folds), ``wall_s`` (mean per run) and ``n`` (clips).
    """
    from pipeline.evaluate.metrics import classification_metrics

    rows = []
    labels = sorted(predictions["label"].unique())
    for key, part in predictions.groupby(["variant", "arm", "split", "seed"], sort=False):
        if part["fold"].nunique() < n_folds:
            continue
        per_run = part.groupby("fold")[["train_accuracy", "train_loss", "wall_s"]].first()
        rows.append({**dict(zip(["variant", "arm", "split", "seed"], key, strict=True)),
                     **classification_metrics(part["label"], part["predicted"], labels),
                     **per_run.mean().to_dict()})
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values.mean():.3f}"


def summary_table(scores: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """Per (variant, arm, split): mean ± std over seeds, and the paired UF1 difference vs ``default`` (95% CI)."""
    from pipeline.evaluate.metrics import ci95

    rows = []
    order = {name: i for i, name in enumerate(plan.variants)}
    for (variant, arm, split), part in sorted(scores.groupby(["variant", "arm", "split"]),
                                              key=lambda item: (item[0][2] != "validation", item[0][1],
                                                                order.get(item[0][0], 99))):
        reference = scores[(scores["variant"] == DEFAULT) & (scores["arm"] == arm) & (scores["split"] == split)]
        paired = part.merge(reference[["seed", "uf1"]], on="seed", suffixes=("", "_default"))
        diff = (paired["uf1"] - paired["uf1_default"]).to_numpy()
        interval = ci95(diff) if variant != DEFAULT and len(diff) > 1 else None
        rows.append({
            "split": split, "arm": arm, "variant": variant, "stage": plan.variants[variant].stage
            if variant in plan.variants else "", "seeds": len(part),
            "UF1": _mean_std(part["uf1"]), "UAR": _mean_std(part["uar"]), "accuracy": _mean_std(part["accuracy"]),
            "ΔUF1 vs default [95% CI]": (f"{diff.mean():+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]"
                                         if interval else "—"),
            "train acc (last epoch)": f"{part['train_accuracy'].mean():.3f}",
            "s per run": "—" if part["wall_s"].isna().all() else f"{part['wall_s'].mean():.1f}",
            "uf1_mean": part["uf1"].mean(),
        })
    return pd.DataFrame(rows)


ARM_NAMES = ("ma2mi", "scratch", "baseline")


def _mean_uf1(validation: pd.DataFrame, variant: str, arm: str, n_seeds: int) -> float | None:
    """Mean validation UF1 over seeds of ``variant`` on ``arm``; None until every seed finished."""
    values = validation[(validation["variant"] == variant) & (validation["arm"] == arm)]["uf1"]
    return float(values.mean()) if len(values) == n_seeds else None


def decision_stages(plan: Plan) -> list[str]:
    """The plan's stages that decide something (a variant on the validation split), in plan order.

    A stage of test runs only (a check of the chosen configuration) decides nothing.
    """
    stages = dict.fromkeys(variant.stage for variant in plan.variants.values())
    return [stage for stage in stages if any("validation" in v.splits for v in plan.variants.values()
                                             if v.stage == stage)]


def decisions(scores: pd.DataFrame, plan: Plan) -> list[dict[str, Any]]:
    """The selection rule of docs/study.md, stage by stage, in the order stages first appear in the plan.

    Stage ``A`` decides per arm: the arm's stage-A variant of the best mean validation UF1, ``default`` unless one
    is strictly higher (ties: the earlier variant). A later stage decides jointly for the arms its variants run: a
    variant replaces the configuration chosen so far (the reference) only if the mean over those arms of its mean
    validation UF1 is strictly higher than the reference's; the best such variant wins. A stage is decided once
    every seed of every variant it compares finished.

    Returns:
        One entry per decided stage: ``stage``, ``chosen`` (arm -> the variant whose configuration the arm carries
        after the stage) and ``scores`` (variant -> the mean compared).
    """
    if scores.empty:  # no run has finished yet: nothing is decided
        return []
    validation = scores[scores["split"] == "validation"]
    n_seeds = len(plan.seeds)
    current = dict.fromkeys(ARM_NAMES, DEFAULT)
    out = []
    for stage in decision_stages(plan):
        names = [name for name, variant in plan.variants.items() if variant.stage == stage]
        if stage == "A":
            chosen, compared = {}, {}
            for arm in ARM_NAMES:
                means = {name: _mean_uf1(validation, name, arm, n_seeds) for name in names
                         if arm in plan.variants[name].arms}
                if not means or None in means.values():
                    continue
                best = max(means, key=lambda name, m=means: (m[name], -names.index(name)))
                chosen[arm] = best if means[best] > means.get(DEFAULT, -1.0) else DEFAULT
                compared.update({f"{name} ({arm})": value for name, value in means.items()})
            if len(chosen) < len({arm for name in names for arm in plan.variants[name].arms}):
                break
        else:
            arms = sorted({arm for name in names for arm in plan.variants[name].arms})
            reference = [_mean_uf1(validation, current[arm], arm, n_seeds) for arm in arms]
            means = {name: [_mean_uf1(validation, name, arm, n_seeds) for arm in plan.variants[name].arms]
                     for name in names}
            if None in reference or any(None in values for values in means.values()):
                break
            compared = {"reference": float(np.mean(reference)),
                        **{name: float(np.mean(values)) for name, values in means.items()}}
            best = max(names, key=lambda name: (compared[name], -names.index(name)))
            chosen = dict(current)
            if compared[best] > compared["reference"]:
                chosen.update(dict.fromkeys(plan.variants[best].arms, best))
        current = {**current, **chosen}
        out.append({"stage": stage, "chosen": dict(current), "scores": compared})
    return out


def configuration(plan: Plan, scores: pd.DataFrame, variant: str, arm: str) -> dict[str, Any]:
    """The overrides a run of ``variant`` on ``arm`` trains with: the choices of the earlier stages, then its own.

    Raises:
        RuntimeError: an earlier stage is not decided yet (its runs have not all finished).
    """
    order = list(dict.fromkeys(v.stage for v in plan.variants.values()))
    stage = plan.variants[variant].stage
    before = [name for name in decision_stages(plan) if order.index(name) < order.index(stage)]
    decided = decisions(scores, plan)
    if len(decided) < len(before):
        raise RuntimeError(f"variant {variant}: stage {before[len(decided)]} is not decided yet; run its variants "
                           "first")
    overrides: dict[str, Any] = {}
    chain = [decided[i]["chosen"][arm] for i in range(len(before))]
    for name in dict.fromkeys(chain):  # each chosen variant's own overrides, in stage order
        overrides.update(plan.variants[name].set)
    return {**overrides, **plan.variants[variant].set}


def encoder_ratios(workspace: Path, out: Path) -> dict[str, float]:
    """Held-out ``recon_loss / copy_loss`` of each MA2MI encoder the study fine-tunes from.

    Keys: ``"workspace (pretrain.epochs: N)"`` for the workspace's own ``dvc repro`` encoder, and each study encoder's
    pre-training overrides (``<out>/pretrain-*/overrides.json``) as JSON. Encoders not trained yet are absent.
    """
    from pipeline.config import load_params

    params = load_params(workspace / "params.yaml")
    ratios = {}
    own = workspace / params.paths.pretrain_dir / "metrics.json"
    if own.is_file():
        ratios[f"workspace (pretrain.epochs: {params.pretrain.epochs})"] = json.loads(own.read_text())[
            "heldout_recon_over_copy"]
    for folder in sorted(out.glob("pretrain-*")):
        if (folder / "metrics.json").is_file():
            overrides = json.loads((folder / "overrides.json").read_text())
            ratios[json.dumps(overrides)] = json.loads((folder / "metrics.json").read_text())["heldout_recon_over_copy"]
    return ratios


def report_markdown(scores: pd.DataFrame, plan: Plan, encoders: dict[str, float] | None = None) -> str:
    """The results section of ``docs/study.md``.

    The table, each stage's decision, the chosen configuration per arm once every stage is decided, and the
    held-out ratio of each pre-trained encoder (``encoders``: :func:`encoder_ratios`).
    """
    table = summary_table(scores, plan).drop(columns="uf1_mean")
    header = "| " + " | ".join(table.columns) + " |"
    lines = [header, "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in table.itertuples(index=False)]
    decided_stages = decisions(scores, plan)
    decided = "\n".join(
        f"- Stage {entry['stage']}: " + ", ".join(f"`{arm}` → `{name}`" for arm, name in entry["chosen"].items())
        + " (compared: " + ", ".join(f"{key} {value:.4f}" for key, value in entry["scores"].items()) + ")"
        for entry in decided_stages) or "- no stage decided yet (runs missing)"
    chosen = ""
    if len(decided_stages) == len(decision_stages(plan)):
        check = next((name for name, variant in plan.variants.items() if variant.stage not in decision_stages(plan)),
                     None)
        if check is not None:
            chosen = "\n**The chosen configuration** (overrides of the workspace's params, per arm):\n\n" + "\n".join(
                f"- `{arm}`: {configuration(plan, scores, check, arm) or 'none (the default)'}"
                for arm in sorted({arm for variant in plan.variants.values() for arm in variant.arms})) + "\n"
    ratios = ""
    if encoders:
        ratios = ("\n**Pre-trained encoders**, held-out `recon_loss / copy_loss` (lower: a better prediction of the "
                  "future frame than copying the current one):\n\n"
                  + "\n".join(f"- {name}: {value:.4f}" for name, value in encoders.items()) + "\n")
    return ("\n## Results\n\nMean ± sample std over seeds; each seed's predictions pooled over the 8 folds. "
            "ΔUF1 is paired by seed with the same arm and split under `default` (Student's t 95% interval). "
            "Training accuracy is the last epoch's, on the training clips (augmented), mean over folds.\n\n"
            + "\n".join(lines) + f"\n\n**The rule's decisions** (mean validation UF1):\n\n{decided}\n"
            + chosen + ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["workspace", "run", "report"])
    parser.add_argument("--workspace", type=Path, default=REPO / ".dev-seed", help="the development workspace")
    parser.add_argument("--plan", type=Path, default=PLAN)
    parser.add_argument("--out", type=Path, default=None, help="default: <workspace>/results/study")
    parser.add_argument("--variants", nargs="*", default=None, help="run only these (default: all)")
    parser.add_argument("--workers", type=int, default=0, help="training runs at once (0 = one per core)")
    parser.add_argument("--check", action="store_true", help="report: write nothing, exit 1 if docs is stale")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.command == "workspace":
        make_workspace(args.workspace)
        return 0
    plan = Plan.read(args.plan)
    out = args.out or args.workspace / "results" / "study"
    if args.command == "run":
        return 1 if run_study(args.workspace, plan, out, args.variants, args.workers) else 0
    scores = study_scores(args.workspace, out, plan)
    scores.to_csv(out / "scores.csv", index=False)
    text = DOC.read_text()
    head = text.split(MARKER)[0].rstrip("\n")
    section = report_markdown(scores, plan, encoder_ratios(args.workspace, out))
    new = f"{head}\n\n{MARKER}\n{section}"
    if args.check:
        return 0 if new == text else 1
    DOC.write_text(new)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
