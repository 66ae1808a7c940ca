"""DVC stage ``finetune_<arm>@<fold>``: one arm of the ablation on one LOSO fold, once per seed.

Arms (DESIGN §5): ``ma2mi`` (MIACNet, branches from ``pretrain/encoder.pt``), ``scratch`` (MIACNet, random
init) and ``baseline`` (``finetune.baseline.model``, e.g. MMNet, random init); all with the same folds, seeds
and recipe. Outputs under ``paths.finetune_dir/<arm>/fold<k>/``: ``predictions.parquet`` (the held-out
subject's samples with ``seed``, ``label``, ``predicted`` and one ``prob_<class>`` column per class; one row
per sample and seed), ``model_seed<s>.pt`` and ``dvclive/seed<s>/`` (per-epoch training loss and accuracy).
While it runs, each seed's full training state is saved after every epoch under ``paths.checkpoint_dir``: a
killed run resumes where it stopped, finished seeds included, with the same result. Run:
``python -m stages.finetune --arm ma2mi --fold 3``.
"""

from __future__ import annotations

from pipeline.orchestration import flow, get_run_logger, run_stage  # first: sets Prefect defaults

import argparse
import shutil

import pandas as pd
import torch
from dvclive import Live

from pipeline.config import ModelParams, Params, load_params
from pipeline.engine import resolve_device, save_checkpoint, set_deterministic, training_fingerprint
from pipeline.finetune import MicroTensors, finetune_fold, predict
from pipeline.ingest_micro import read_classes
from pipeline.io import atomic_dir, write_parquet
from pipeline.loso import loso_fold

ARMS = ("ma2mi", "scratch", "baseline")
PREDICTION_COLUMNS = ["sample_id", "dataset", "source_dataset", "subject", "clip", "label", "label_name"]


def arm_model(params: Params, arm: str) -> tuple[str, ModelParams]:
    """``(model name, model params)`` of ``arm``: MIACNet with the ``model`` section, or the baseline model
    with the ``model`` section at ``finetune.baseline.image_size_px``."""
    if arm == "baseline":
        baseline = params.finetune.baseline
        return baseline.model, params.model.model_copy(update={"image_size_px": baseline.image_size_px})
    return "miacnet", params.model


@flow(name="finetune-fold")
def finetune_flow(arm: str, fold: int, params_path: str = "params.yaml") -> dict:
    """Fine-tune ``arm`` on LOSO fold ``fold`` once per seed of ``finetune.seeds``."""
    params = load_params(params_path)
    if arm not in params.finetune.arms:
        raise ValueError(f"arm {arm!r} is off: finetune.arms are {params.finetune.arms} "
                         "(the baseline arm runs when finetune.baseline.folds is not empty)")
    logger = get_run_logger()
    set_deterministic(params.finetune.deterministic)
    device = resolve_device(params.finetune.device)
    samples_path = params.paths.micro_dir / "samples.parquet"
    samples = pd.read_parquet(samples_path)
    names = read_classes(params.paths.micro_dir)
    split = loso_fold(samples["subject"], fold)
    model_name, model_params = arm_model(params, arm)
    encoder, inputs = None, [samples_path]
    if arm == "ma2mi":
        inputs.append(params.paths.pretrain_dir / "encoder.pt")
        encoder = torch.load(inputs[-1], map_location="cpu")["encoder"]
    data = MicroTensors(samples, model_params.image_size_px)
    logger.info("fold %d: test subject %s (%d samples), %d training samples, arm %s (%s, %d px), seeds %s, %s",
                fold, split.test_subject, len(split.test_idx), len(split.train_idx), arm, model_name,
                model_params.image_size_px, params.finetune.seeds, device)
    # one fingerprint for every seed, its inputs hashed once: each seed's state file (seed<s>.pt) names its seed
    recipe = params.finetune.model_dump(mode="json", exclude={"folds", "baseline", "seeds"})
    fingerprint = training_fingerprint({"model": model_params.model_dump(mode="json"), "model_name": model_name,
                                        "arm": arm, "fold": fold, "recipe": recipe}, inputs)
    state_dir = params.paths.checkpoint_dir / "finetune" / arm / f"fold{fold}"
    out_dir = params.paths.finetune_dir / arm / f"fold{fold}"
    tables = []
    with atomic_dir(out_dir) as out:
        for seed in params.finetune.seeds:
            with Live(dir=str(out / "dvclive" / f"seed{seed}"), save_dvc_exp=False, dvcyaml=None) as live:
                def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
                    for key, value in metrics.items():
                        live.log_metric(f"train/{key}", value)
                    live.next_step()

                # a finished seed's state is kept until the stage's outputs are in place: a run killed at a
                # later seed gets the finished seeds' weights back without training them again
                model = finetune_fold(data, split, len(names), model_name, model_params, params.finetune, seed,
                                      device, encoder, log_epoch, state_path=state_dir / f"seed{seed}.pt",
                                      fingerprint=fingerprint)
            predicted, probs = predict(model, data, split.test_idx, device)
            table = samples.iloc[split.test_idx][PREDICTION_COLUMNS].reset_index(drop=True)
            table["predicted"] = predicted
            table[[f"prob_{name}" for name in names]] = probs
            table["arm"], table["model"], table["fold"], table["seed"] = arm, model_name, fold, seed
            tables.append(table)
            save_checkpoint(out / f"model_seed{seed}.pt", model=model.state_dict(), model_name=model_name,
                            arm=arm, fold=fold, seed=seed, test_subject=split.test_subject)
            logger.info("fold %d (%s), %s, seed %d: accuracy %.3f on %d held-out samples", fold,
                        split.test_subject, arm, seed, float((table["predicted"] == table["label"]).mean()),
                        len(table))
        write_parquet(pd.concat(tables, ignore_index=True), out / "predictions.parquet")
    shutil.rmtree(state_dir, ignore_errors=True)  # the outputs are in place: nothing left to resume
    return {"test_subject": split.test_subject, "n": len(split.test_idx), "seeds": list(params.finetune.seeds)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", required=True, choices=ARMS)
    parser.add_argument("--fold", required=True, type=int)
    args = parser.parse_args(argv)
    run_stage(finetune_flow, arm=args.arm, fold=args.fold)


if __name__ == "__main__":
    main()
