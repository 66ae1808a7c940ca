"""DVC stage ``finetune_<arm>@<fold>``: one arm of the ablation on one LOSO fold, once per seed.

Arms (:data:`pipeline.arms.ARMS`, DESIGN §5): ``ma2mi`` (MIACNet, branches from ``pretrain/encoder.pt``), ``scratch``
(MIACNet, random init) and ``baseline`` (``finetune.baseline.model``, e.g. MMNet, random init); all with the same
folds and seeds, and the recipe with the arm's changes (``finetune.arm_recipes``). Outputs under
``paths.finetune_dir/<arm>/fold<k>/``: ``predictions.parquet`` (the held-out subject's samples with ``seed``,
``label``, ``predicted`` and one ``prob_<class>`` column per class; one row per sample and seed), ``model_seed<s>.pt``
and ``dvclive/seed<s>/`` (per-epoch training loss and accuracy). While it runs, each seed's full training state is
saved (every 30 s and at its end) under ``paths.checkpoint_dir``: a killed run resumes where it stopped, finished
seeds included, with the same result. The training runs (seeds × label budgets) are independent Prefect task runs on
Dask worker processes of one thread each, ``finetune.workers`` at once
(:func:`pipeline.orchestration.stage.dask_task_runner`), each loading the fold's inputs itself
(:mod:`pipeline.train.fold_run`); a run's result does not depend on how many run beside it, and runs side by side
share no file (each writes its own curve folder with :class:`pipeline.train.engine.EpochCurves`, not DVCLive's
``Live``, whose workspace signal file two runs ending at once raced on). When a run fails, the others still run to
their end; the stage then fails with :class:`TrainingRunsFailed`, naming each failed run (arm, fold, seed, label
budget) and its error, and its rerun takes the finished runs back from their states.
Run: ``python -m stages.finetune --arm ma2mi --fold 3``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.arms import ARMS, active_arms
from pipeline.config import ConfigError, Params, PathsParams, RecipeParams, load_params
from pipeline.data.loso import fold_and_budget_problems, loso_fold
from pipeline.data.micro_table import read_samples
from pipeline.io import atomic_dir, write_parquet
from pipeline.models.registry import ArmModel, arm_model
from pipeline.orchestration.stage import (
    dask_task_runner,
    enter_workdir,
    flow,
    get_run_logger,
    route_library_logs,
    run_stage,
    stage_task,
)


@flow(name="finetune-fold")
def finetune_flow(arm: str, fold: int, params_path: str = "params.yaml") -> dict:
    """Fine-tune ``arm`` on LOSO fold ``fold`` once per seed of ``finetune.recipe.seeds`` (and label budget)."""
    params = load_params(params_path)
    recipe = params.finetune.arm_recipe(arm)  # the shared recipe with the arm's changes (finetune.arm_recipes)
    if arm not in active_arms(params.finetune):
        raise ValueError(f"arm {arm!r} is off: the active arms are {active_arms(params.finetune)} "
                         "(the baseline arm runs when finetune.baseline.folds is not empty)")
    table = read_samples(params.paths.micro_dir, columns=["subject", "label"])
    budgets = params.finetune.label_budgets if ARMS[arm].label_efficiency else []
    problems = fold_and_budget_problems(table["subject"], table["label"], {}, budgets)
    if problems:  # checked before any training: a budget of every clip would train the full run again
        raise ConfigError(f"{params_path}: " + "; ".join(problems))
    split = loso_fold(table["subject"], fold)
    model = arm_model(arm, finetune=params.finetune, model=params.model)  # decided once, carried to every run
    get_run_logger().info("fold %d: test subject %s (%d samples), %d training samples, arm %s (%s, %d px), seeds "
                          "%s, device %s", fold, split.test_subject, len(split.test_idx), len(split.train_idx), arm,
                          model.name, model.image_size_px, recipe.seeds, recipe.device)
    state_dir = training_state_dir(params, arm, fold)
    runs = planned_runs(params, arm, fold)
    with atomic_dir(params.paths.finetune_dir / arm / f"fold{fold}") as out, \
            dask_task_runner(params.finetune.workers, params.finetune.cluster, len(runs)) as runner:
        # a finished run's state is kept until the stage's outputs are in place: a stage that failed or was
        # killed at a later run gets the finished runs' weights back without training them again
        futures = {name: runner.submit(train_seed.with_options(task_run_name=name),
                                       {"workdir": os.getcwd(), "paths": params.paths, "arm": arm, "model": model,
                                        "recipe": recipe, "fold": fold, **run, "out": out})
                   for name, run in runs.items()}
        tables = gather_runs(futures, state_dir)
        write_parquet(pd.concat(tables, ignore_index=True), out / "predictions.parquet")
    shutil.rmtree(state_dir, ignore_errors=True)  # the outputs are in place: nothing left to resume
    return {"test_subject": split.test_subject, "n": len(split.test_idx), "seeds": list(recipe.seeds),
            "label_budgets": list(params.finetune.label_budgets) if ARMS[arm].label_efficiency else []}


def training_state_dir(params: Params, arm: str, fold: int) -> Path:
    """Where the runs of ``arm`` on ``fold`` keep their resumable training states (removed once the stage's outputs
    are in place; kept when it fails)."""
    return params.paths.checkpoint_dir / "finetune" / arm / f"fold{fold}"


def planned_runs(params: Params, arm: str, fold: int) -> dict[str, dict[str, Any]]:
    """The stage's training runs, by :func:`run_name`: each one's ``seed``, ``budget`` (None: all labels) and
    ``state_path`` (in :func:`training_state_dir`; the same in every attempt, so a rerun resumes it).

    Every seed of ``finetune.recipe.seeds`` on all labels, then, for an arm of the label-efficiency curve, on each
    of ``finetune.label_budgets``.
    """
    budgets = [None, *params.finetune.label_budgets] if ARMS[arm].label_efficiency else [None]
    state_dir = training_state_dir(params, arm, fold)
    return {run_name(arm, fold, seed, budget): {
        "seed": seed, "budget": budget,
        "state_path": state_dir / (f"seed{seed}.pt" if budget is None else f"budget{budget}_seed{seed}.pt")}
        for budget in budgets for seed in params.finetune.recipe.seeds}


def run_name(arm: str, fold: int, seed: int, budget: int | None) -> str:
    """How a training run is named in the Prefect UI and in errors: ``'scratch fold 6 seed 1 budget 2'``."""
    return f"{arm} fold {fold} seed {seed}" + ("" if budget is None else f" budget {budget}")


class TrainingRunsFailed(RuntimeError):
    """Training runs of a fold stage failed: the message names each run (arm, fold, seed, label budget) and why."""


def gather_runs(futures: Mapping[str, Any], state_dir: Path) -> list[pd.DataFrame]:
    """Every run's predictions, in the order of ``futures`` (run name -> future), once EVERY run has ended.

    A failing run does not stop the others: each runs to its end, so its training state (under ``state_dir``,
    kept when the stage fails) lets the rerun take it back without training it again.

    Raises:
        TrainingRunsFailed: a run raised; the message names every failed run and its error, and says how many
            finished. Chained to the first run's error.
    """
    tables, failed, first = [], [], None
    for name, future in futures.items():
        try:
            tables.append(future.result())
        except Exception as error:  # every run's error is reported, the first one chained
            failed.append(f"{name}: {type(error).__name__}: {error}")
            first = first or error
    if failed:
        raise TrainingRunsFailed(
            f"{len(failed)} of {len(futures)} training runs failed:\n  " + "\n  ".join(failed) +
            f"\nThe {len(tables)} finished runs are kept in {state_dir}: a rerun takes them back without training "
            "them again, and resumes each failed one from its last saved epoch, if it saved one") from first
    return tables


def train_task(workdir: str, paths: PathsParams, arm: str, model: ArmModel, recipe: RecipeParams, fold: int,
               seed: int, budget: int | None, out: Path, state_path: Path) -> pd.DataFrame:
    """:func:`pipeline.train.fold_run.train_run` in a Dask worker, in the project's folder."""
    enter_workdir(workdir)
    route_library_logs()  # the per-epoch lines, into the task run's log
    from pipeline.train.fold_run import train_run  # torch and the models load where the run trains, not in the stage

    return train_run(paths=paths, arm=arm, model=model, recipe=recipe, fold=fold, seed=seed, budget=budget, out=out,
                     state_path=state_path)


# one Prefect task run per training run (seed and label budget), as the UI shows them
train_seed = stage_task(train_task, name="finetune-seed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", required=True, choices=list(ARMS))
    parser.add_argument("--fold", required=True, type=int)
    args = parser.parse_args(argv)
    run_stage(finetune_flow, arm=args.arm, fold=args.fold)


if __name__ == "__main__":
    main()
