"""DVC stage ``finetune_<init>@<fold>``: MIACNet on one LOSO fold, from MA2MI (``ma2mi``) or from scratch.

Outputs under ``paths.finetune_dir/<init>/fold<k>/``: ``predictions.parquet`` (the held-out subject's samples
with ``label``, ``predicted`` and one ``prob_<class>`` column per class), ``model.pt`` and ``dvclive/``
(per-epoch training loss and accuracy). While it runs, the full training state is saved after every epoch under
``paths.checkpoint_dir``: a killed run resumes where it stopped, with the same result. Run:
``python -m stages.finetune --init ma2mi --fold 3``.
"""

from __future__ import annotations

from pipeline.orchestration import flow, get_run_logger, run_stage  # first: sets Prefect defaults

import argparse

import pandas as pd
import torch
from dvclive import Live

from pipeline.config import load_params
from pipeline.engine import (
    resolve_device,
    save_checkpoint,
    seed_everything,
    set_deterministic,
    training_fingerprint,
)
from pipeline.finetune import MicroTensors, finetune_fold, predict
from pipeline.ingest_micro import read_classes
from pipeline.io import atomic_dir, write_parquet
from pipeline.loso import loso_fold

PREDICTION_COLUMNS = ["sample_id", "dataset", "source_dataset", "subject", "clip", "label", "label_name"]


@flow(name="finetune-fold")
def finetune_flow(init: str, fold: int, params_path: str = "params.yaml") -> dict:
    """Fine-tune on LOSO fold ``fold`` with initialisation ``init`` ('ma2mi' or 'scratch')."""
    params = load_params(params_path)
    if init not in params.finetune.inits:
        raise ValueError(f"init {init!r} is not in finetune.inits {params.finetune.inits}")
    logger = get_run_logger()
    seed_everything(params.finetune.seed)
    set_deterministic(params.finetune.deterministic)
    device = resolve_device(params.finetune.device)
    samples_path = params.paths.micro_dir / "samples.parquet"
    samples = pd.read_parquet(samples_path)
    names = read_classes(params.paths.micro_dir)
    split = loso_fold(samples["subject"], fold)
    encoder = None
    inputs = [samples_path]
    if init == "ma2mi":
        inputs.append(params.paths.pretrain_dir / "encoder.pt")
        encoder = torch.load(inputs[-1], map_location="cpu")["encoder"]
    fingerprint = training_fingerprint({"model": params.model.model_dump(mode="json"), "init": init, "fold": fold,
                                        "finetune": params.finetune.model_dump(mode="json")}, inputs)
    state_path = params.paths.checkpoint_dir / "finetune" / init / f"fold{fold}.pt"
    data = MicroTensors(samples, params.model.image_size_px)
    logger.info("fold %d: test subject %s (%d samples), %d training samples, init %s, %s", fold,
                split.test_subject, len(split.test_idx), len(split.train_idx), init, device)
    out_dir = params.paths.finetune_dir / init / f"fold{fold}"
    with atomic_dir(out_dir) as out:
        with Live(dir=str(out / "dvclive"), save_dvc_exp=False, dvcyaml=None) as live:
            def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
                for key, value in metrics.items():
                    live.log_metric(f"train/{key}", value)
                live.next_step()

            model = finetune_fold(data, split, len(names), params.model, params.finetune, device, encoder, log_epoch,
                                  state_path=state_path, fingerprint=fingerprint)
        predicted, probs = predict(model, data, split.test_idx, device)
        table = samples.iloc[split.test_idx][PREDICTION_COLUMNS].reset_index(drop=True)
        table["predicted"] = predicted
        table[[f"prob_{name}" for name in names]] = probs
        table["init"], table["fold"], table["seed"] = init, fold, params.finetune.seed
        write_parquet(table, out / "predictions.parquet")
        save_checkpoint(out / "model.pt", model=model.state_dict(), init=init, fold=fold,
                        test_subject=split.test_subject)
    state_path.unlink(missing_ok=True)  # the outputs are in place: nothing left to resume
    accuracy = float((table["predicted"] == table["label"]).mean())
    logger.info("fold %d (%s, %s): accuracy %.3f on %d held-out samples", fold, split.test_subject, init, accuracy,
                len(table))
    return {"test_subject": split.test_subject, "n": len(table)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, choices=["ma2mi", "scratch"])
    parser.add_argument("--fold", required=True, type=int)
    args = parser.parse_args(argv)
    run_stage(finetune_flow, init=args.init, fold=args.fold)


if __name__ == "__main__":
    main()
