"""DVC stage ``finetune_<arm>@<fold>``: one arm of the ablation on one LOSO fold, once per seed.

Arms (:data:`pipeline.arms.ARMS`, DESIGN §5): ``ma2mi`` (MIACNet, branches from ``pretrain/encoder.pt``),
``scratch`` (MIACNet, random init) and ``baseline`` (``finetune.baseline.model``, e.g. MMNet, random init); all
with the same folds, seeds and recipe. Outputs under ``paths.finetune_dir/<arm>/fold<k>/``: ``predictions.parquet``
(the held-out subject's samples with ``seed``, ``label``, ``predicted`` and one ``prob_<class>`` column per
class; one row per sample and seed), ``model_seed<s>.pt`` and ``dvclive/seed<s>/`` (per-epoch training loss and
accuracy). While it runs, each seed's full training state is saved after every epoch under
``paths.checkpoint_dir``: a killed run resumes where it stopped, finished seeds included, with the same result.
The training runs (seeds × label budgets) are independent Prefect task runs on Dask worker processes of one thread
each, ``finetune.workers`` at once (:func:`pipeline.orchestration.dask_task_runner`); a run's result does not
depend on how many run beside it. Run: ``python -m stages.finetune --arm ma2mi --fold 3``.
"""

from __future__ import annotations

import argparse
import os
import shutil

import pandas as pd
import torch

from pipeline.arms import ARMS, active_arms
from pipeline.config import load_params
from pipeline.distributed import resolve_device
from pipeline.engine import set_deterministic, training_fingerprint
from pipeline.finetune import arm_model, finetune_seed
from pipeline.io import atomic_dir, write_parquet
from pipeline.loso import loso_fold
from pipeline.micro_data import MicroTensors
from pipeline.micro_table import SAMPLES_FILE, read_classes, read_samples
from pipeline.orchestration import (
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
    """Fine-tune ``arm`` on LOSO fold ``fold`` once per seed of ``finetune.recipe.seeds``."""
    params = load_params(params_path)
    recipe = params.finetune.recipe
    if arm not in active_arms(params.finetune):
        raise ValueError(f"arm {arm!r} is off: the active arms are {active_arms(params.finetune)} "
                         "(the baseline arm runs when finetune.baseline.folds is not empty)")
    set_deterministic(recipe.deterministic)
    device = resolve_device(recipe.device)
    micro_dir = params.paths.micro_dir
    samples, classes = read_samples(micro_dir), read_classes(micro_dir)
    split = loso_fold(samples["subject"], fold)
    model_name, model_params = arm_model(params, arm)
    encoder, inputs = None, [micro_dir / SAMPLES_FILE]
    if ARMS[arm].pretrained:
        inputs.append(params.paths.pretrain_dir / "encoder.pt")
        encoder = torch.load(inputs[-1], map_location="cpu")["encoder"]
    data = MicroTensors(samples, model_params.image_size_px)
    get_run_logger().info("fold %d: test subject %s (%d samples), %d training samples, arm %s (%s, %d px), seeds "
                          "%s, %s", fold, split.test_subject, len(split.test_idx), len(split.train_idx), arm,
                          model_name, model_params.image_size_px, recipe.seeds, device)
    # one fingerprint for every seed, its inputs hashed once: each seed's state file (seed<s>.pt) names its seed
    fingerprint = training_fingerprint({"model": model_params.model_dump(mode="json"), "model_name": model_name,
                                        "arm": arm, "fold": fold,
                                        "recipe": recipe.model_dump(mode="json", exclude={"seeds"})}, inputs)
    state_dir = params.paths.checkpoint_dir / "finetune" / arm / f"fold{fold}"
    budgets = [None, *params.finetune.label_budgets] if ARMS[arm].label_efficiency else [None]
    runs = [(b, seed) for b in budgets for seed in recipe.seeds]
    with atomic_dir(params.paths.finetune_dir / arm / f"fold{fold}") as out, \
            dask_task_runner(params.finetune.workers, params.finetune.cluster, len(runs)) as runner:
        # a finished run's state is kept until the stage's outputs are in place: a stage killed at a later seed
        # gets the finished runs' weights back without training them again
        futures = [runner.submit(
            train_seed.with_options(task_run_name=f"{arm} fold {fold} seed {seed}" + (f" budget {b}" if b else "")),
            {"workdir": os.getcwd(), "run": {
                "samples": samples, "data": data, "classes": classes, "fold": split, "arm": arm, "params": params,
                "seed": seed, "device": device, "encoder_state": encoder, "out": out,
                "state_path": state_dir / (f"seed{seed}.pt" if b is None else f"budget{b}_seed{seed}.pt"),
                "fingerprint": fingerprint, "budget": b}})
            for b, seed in runs]
        tables = [future.result() for future in futures]
        write_parquet(pd.concat(tables, ignore_index=True), out / "predictions.parquet")
    shutil.rmtree(state_dir, ignore_errors=True)  # the outputs are in place: nothing left to resume
    return {"test_subject": split.test_subject, "n": len(split.test_idx), "seeds": list(recipe.seeds),
            "label_budgets": [b for b in budgets if b is not None]}


def train_run(workdir: str, run: dict) -> pd.DataFrame:
    """``finetune_seed(**run)`` (:func:`pipeline.finetune.finetune_seed`) in a Dask worker: in the project's
    folder, on one thread."""
    enter_workdir(workdir)
    torch.set_num_threads(1)
    set_deterministic(run["params"].finetune.recipe.deterministic)
    route_library_logs()  # the per-epoch lines, into the task run's log
    return finetune_seed(**run)


# one Prefect task run per training run (seed and label budget), as the UI shows them
train_seed = stage_task(train_run, name="finetune-seed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", required=True, choices=list(ARMS))
    parser.add_argument("--fold", required=True, type=int)
    args = parser.parse_args(argv)
    run_stage(finetune_flow, arm=args.arm, fold=args.fold)


if __name__ == "__main__":
    main()
