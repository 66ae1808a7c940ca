"""DVC stage ``evaluate``: the ablation, side by side, on pooled LOSO predictions (DESIGN §6).

The logic is :mod:`pipeline.evaluate.ablation`. Outputs under ``paths.evaluate_dir``:

- ``metrics.json``: ``<arm>.{accuracy, uf1, uar}`` (means over seeds), ``<arm>.<metric>_std``, ``<arm>.n``
  (samples per seed), ``ma2mi_minus_scratch.*`` and ``ma2mi_minus_best_baseline.*`` (paired by seed, with 95%
  intervals over seeds; the latter names its ``baseline``), ``label_efficiency.<arm>.<budget>.*`` and ``run`` (seeds,
  git revision, params hash);
- ``label_efficiency.csv`` (arm, budget, clips per class, seed, scores), ``label_efficiency_uf1.csv`` (mean UF1 per
  arm and clips per class: a DVC plot) and ``label_efficiency.png`` (mean ± std over seeds, each seed a dot);
- ``per_seed.csv`` (arm, seed, metrics), ``per_subject.csv`` and ``per_dataset.csv`` (arm, group, metrics
  over all seeds' predictions), ``confusion/<arm>.csv`` (DVC confusion plots), ``confusion.png``,
  ``ablation.png`` (mean ± std bars with each seed's point), ``curves.csv`` / ``curves.png`` (mean training
  loss per epoch over folds and seeds); and a Prefect table artifact.

Run: ``python -m stages.evaluate``.
"""

from __future__ import annotations

from prefect.artifacts import create_table_artifact

from pipeline.arms import ARMS, active_arms, arm_label
from pipeline.config import load_params
from pipeline.data.micro_table import read_classes, read_samples
from pipeline.evaluate.ablation import (
    ablation_inputs,
    evaluate_ablation,
    label_efficiency,
    run_info,
    save_figures,
    save_label_efficiency_figure,
    summary_rows,
)
from pipeline.evaluate.metrics import SCORES
from pipeline.io import atomic_dir, write_json
from pipeline.orchestration.stage import flow, get_run_logger, run_stage


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml") -> dict:
    """Pool every fold's predictions per arm and seed; write metrics (mean ± std over seeds), tables, plots."""
    params = load_params(params_path)
    classes = read_classes(params.paths.micro_dir)
    subjects = set(read_samples(params.paths.micro_dir, ["subject"])["subject"])
    predictions, curves = ablation_inputs(params, subjects)
    baselines = [arm_label(params.finetune, arm) for arm in active_arms(params.finetune) if ARMS[arm].baseline]
    ablation = evaluate_ablation(predictions, classes, baselines)
    counts = read_samples(params.paths.micro_dir, ["subject", "label"]).groupby(["subject", "label"]).size()
    efficiency, efficiency_summary = label_efficiency(predictions, classes, float(counts.mean()))
    metrics = {"run": run_info(params), **ablation.metrics}
    if efficiency_summary:
        metrics["label_efficiency"] = efficiency_summary
    with atomic_dir(params.paths.evaluate_dir) as out:
        (out / "confusion").mkdir()
        for label, rows in ablation.confusion_rows.items():
            rows.to_csv(out / "confusion" / f"{label}.csv", index=False)
        curves.to_csv(out / "curves.csv")
        ablation.per_seed.to_csv(out / "per_seed.csv", index=False)
        ablation.per_subject.to_csv(out / "per_subject.csv", index=False)
        ablation.per_dataset.to_csv(out / "per_dataset.csv", index=False)
        save_figures(out, ablation, curves, classes)
        efficiency.to_csv(out / "label_efficiency.csv", index=False)
        (efficiency.pivot_table(index="clips_per_class", columns="arm", values="uf1", aggfunc="mean")
         .reindex(columns=sorted(set(efficiency["arm"]))).to_csv(out / "label_efficiency_uf1.csv"))
        if len(efficiency):
            save_label_efficiency_figure(out, efficiency)
        write_json(metrics, out / "metrics.json")
    rows = summary_rows(metrics)
    create_table_artifact(key="mer-loso-metrics", table=rows,
                          description=f"Pooled LOSO metrics, mean ± std over seeds {list(params.finetune.recipe.seeds)}"
                                      f", protocol {params.micro.protocol}, {len(subjects)} subjects")
    for row in rows:
        get_run_logger().info("%s: %s (seeds: %s)", row["arm"], ", ".join(f"{s} {row[s]}" for s in SCORES),
                              row["seeds"])
    return metrics


def main() -> None:
    run_stage(evaluate_flow)


if __name__ == "__main__":
    main()
