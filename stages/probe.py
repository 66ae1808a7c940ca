"""DVC stage ``probe``: a linear probe of frozen encoders, MA2MI's against random initialisations (issue 11).

The logic is :mod:`pipeline.evaluate.probe`. For MA2MI's encoder (``pretrain/encoder.pt``) and for one randomly
initialised
encoder per seed of ``finetune.recipe.seeds``, a logistic regression on the frozen action codes is scored by pooled
LOSO over every subject, once on the flattened action code (where the motion is) and once on the code averaged over
space (what it is, not where). Outputs under ``paths.probe_dir``: ``metrics.json`` (per kind of feature,
``flattened`` and ``pooled``: ``ma2mi.*``; ``random.*`` mean ± std over seeds; ``ma2mi_minus_random.*`` with its 95%
interval over the random seeds) and ``per_encoder.csv`` (one row per encoder, seed and kind of feature).
Run: ``python -m stages.probe``.
"""

from __future__ import annotations

import pandas as pd
import torch

from pipeline.config import load_params
from pipeline.data.micro import MicroTensors
from pipeline.data.micro_table import read_classes, read_samples
from pipeline.evaluate.metrics import SCORES, classification_metrics, seed_summary
from pipeline.evaluate.probe import PROBE_FEATURES, frozen_encoder, probe_predictions
from pipeline.io import atomic_dir, write_json
from pipeline.orchestration.stage import flow, get_run_logger, run_stage


@flow(name="probe")
def probe_flow(params_path: str = "params.yaml") -> dict:
    """Score the linear probe of MA2MI's frozen encoder and of random ones."""
    params = load_params(params_path)
    samples, classes = read_samples(params.paths.micro_dir), read_classes(params.paths.micro_dir)
    data = MicroTensors(samples, params.model.image_size_px)
    pretrained = torch.load(params.paths.pretrain_dir / "encoder.pt", map_location="cpu", weights_only=True)["encoder"]
    seeds = params.finetune.recipe.seeds
    labels = list(range(len(classes)))
    rows = []
    for encoder, state, seed in [("ma2mi", pretrained, seeds[0]), *(("random", None, s) for s in seeds)]:
        model = frozen_encoder(params.model, len(classes), state, seed)
        for features, predicted in probe_predictions(model, data, samples["subject"], PROBE_FEATURES).items():
            rows.append({"encoder": encoder, "seed": seed, "features": features,
                         **classification_metrics(samples["label"], predicted, labels)})
            get_run_logger().info("probe of the %s encoder (seed %d), %s action code: %s", encoder, seed, features,
                                  ", ".join(f"{s} {rows[-1][s]:.3f}" for s in SCORES))
    table = pd.DataFrame(rows)
    metrics = {"code": f"action code, {params.model.code_channels} channels, frozen"}
    for features, part in table.groupby("features", sort=False):
        ma2mi, random = part[part["encoder"] == "ma2mi"].iloc[0], part[part["encoder"] == "random"]
        metrics[features] = {
            "ma2mi": {s: float(ma2mi[s]) for s in SCORES}, "random": seed_summary(random),
            "ma2mi_minus_random": seed_summary(pd.DataFrame({s: ma2mi[s] - random[s] for s in SCORES}),
                                               interval=True)}
    with atomic_dir(params.paths.probe_dir) as out:
        table.to_csv(out / "per_encoder.csv", index=False)
        write_json(metrics, out / "metrics.json")
    return metrics


def main() -> None:
    run_stage(probe_flow)


if __name__ == "__main__":
    main()
