"""DVC stage ``evaluate``: the ablation, side by side, on pooled LOSO predictions (DESIGN §6).

For each arm (MIACNet+MA2MI ``ma2mi``, MIACNet from ``scratch``, and the baseline, e.g. ``mmnet``, when it is
on) and each seed of ``finetune.seeds``, the predictions of all folds are pooled and scored (accuracy, UF1,
UAR); each arm then gets the mean ± sample std over seeds, and the paired difference MA2MI − scratch (same
seed) gets its own mean ± std. Outputs under ``paths.evaluate_dir``:

- ``metrics.json``: ``<arm>.{accuracy, uf1, uar}`` (means), ``<arm>.<metric>_std``, ``<arm>.n`` (samples per
  seed), ``ma2mi_minus_scratch.*``, and ``run`` (seeds, git revision, params hash);
- ``per_seed.csv`` (arm, seed, metrics), ``per_subject.csv`` and ``per_dataset.csv`` (arm, group, metrics
  over all seeds' predictions), ``confusion/<arm>.csv`` (DVC confusion plots), ``confusion.png``,
  ``ablation.png`` (mean ± std bars with each seed's point), ``curves.csv`` / ``curves.png`` (mean training
  loss per epoch over folds and seeds); and a Prefect table artifact.

Run: ``python -m stages.evaluate``.
"""

from __future__ import annotations

from pipeline.orchestration import flow, get_run_logger, run_stage  # first: sets Prefect defaults

import hashlib
import json
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from pipeline.config import Params, load_params  # noqa: E402
from pipeline.ingest_micro import read_classes  # noqa: E402
from pipeline.io import atomic_dir, atomic_path, write_json  # noqa: E402
from pipeline.metrics import classification_metrics, confusion, per_group_metrics, seed_summary  # noqa: E402

SCORES = ("accuracy", "uf1", "uar")


def read_predictions(params: Params, arm: str, subjects: set[str]) -> pd.DataFrame:
    """Concatenate the fold predictions of ``arm`` (every seed).

    Raises:
        FileNotFoundError: a fold's predictions are missing.
        ValueError: a seed of ``finetune.seeds`` is missing, or for some seed the folds do not cover every
            subject exactly once (pooled metrics would be partial).
    """
    parts = []
    for fold in params.finetune.folds:
        path = params.paths.finetune_dir / arm / f"fold{fold}" / "predictions.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `dvc repro finetune_{arm}`")
        parts.append(pd.read_parquet(path))
    predictions = pd.concat(parts, ignore_index=True)
    for seed in params.finetune.seeds:
        part = predictions[predictions["seed"] == seed]
        if part.empty:
            raise ValueError(f"{arm}: no predictions for seed {seed} under {params.paths.finetune_dir / arm}; "
                             f"run `dvc repro finetune_{arm}`")
        missing = sorted(subjects - set(part["subject"]))
        if missing or part["sample_id"].duplicated().any():
            raise ValueError(f"{arm}, seed {seed}: finetune.folds {params.finetune.folds} do not cover each of "
                             f"the {len(subjects)} subjects exactly once (missing: {missing}); edit finetune.folds")
    return predictions[predictions["seed"].isin(params.finetune.seeds)]


def mean_curve(params: Params, arm: str) -> pd.Series:
    """Mean over folds and seeds of the per-epoch training loss that DVCLive logged (index: epoch, 1-based)."""
    curves = []
    for fold in params.finetune.folds:
        for seed in params.finetune.seeds:
            tsv = (params.paths.finetune_dir / arm / f"fold{fold}" / "dvclive" / f"seed{seed}" / "plots" / "metrics"
                   / "train" / "loss.tsv")
            curves.append(pd.read_csv(tsv, sep="\t").set_index("step")["loss"])
    curve = pd.concat(curves, axis=1).mean(axis=1)
    curve.index = curve.index + 1
    return curve.rename(params.finetune.arm_label(arm))


def run_info(params: Params) -> dict:
    """Seeds, git revision and a hash of the params that shape the results."""
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    shaping = {k: params.model_dump(mode="json")[k] for k in ("micro", "model", "pretrain", "finetune")}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
    return {"seeds": list(params.finetune.seeds), "git_revision": revision, "params_hash": digest,
            "protocol": params.micro.protocol}


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _figures(out: Path, confusions: dict, summaries: dict, per_seed: pd.DataFrame, curves: pd.DataFrame,
             names: tuple[str, ...]) -> None:
    fig, axes = plt.subplots(1, len(confusions), figsize=(4.5 * len(confusions), 4), squeeze=False)
    for ax, (label, matrix) in zip(axes[0], confusions.items()):
        ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=ax, colorbar=False)
        ax.set_title(f"{label}: UF1 {summaries[label]['uf1']:.3f}, UAR {summaries[label]['uar']:.3f}\n"
                     f"(all {summaries[label]['seeds']} seeds' predictions)", fontsize=9)
    fig.tight_layout()
    _save(fig, out / "confusion.png")

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(SCORES) * len(summaries) / 2, 4))
    width = 0.8 / len(summaries)
    for i, (label, summary) in enumerate(summaries.items()):
        x = np.arange(len(SCORES)) + (i - (len(summaries) - 1) / 2) * width
        std = [summary[f"{s}_std"] or 0.0 for s in SCORES]
        ax.bar(x, [summary[s] for s in SCORES], width, yerr=std, capsize=3, label=label, alpha=0.8)
        points = per_seed[per_seed["arm"] == label]
        for j, score in enumerate(SCORES):
            ax.plot(np.full(len(points), x[j]), points[score], "k.", markersize=4)
    ax.set_xticks(np.arange(len(SCORES)), ["accuracy", "UF1", "UAR"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("pooled LOSO score")
    ax.set_title(f"Ablation: mean ± std over {len(per_seed['seed'].unique())} seeds (dots: seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "ablation.png")

    ax = curves.plot(xlabel="epoch", ylabel="training loss (mean over LOSO folds and seeds)", figsize=(6, 4),
                     marker="o", title="Fine-tuning: training loss per epoch")
    _save(ax.figure, out / "curves.png")


def _format(summary: dict, score: str) -> str:
    std = summary[f"{score}_std"]
    return f"{summary[score]:.4f}" + (f" ± {std:.4f}" if std is not None else "")


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml") -> dict:
    """Pool every fold's predictions per arm and seed; write metrics (mean ± std over seeds), tables, plots."""
    params = load_params(params_path)
    names = read_classes(params.paths.micro_dir)
    labels = list(range(len(names)))
    subjects = set(pd.read_parquet(params.paths.micro_dir / "samples.parquet", columns=["subject"])["subject"])
    metrics: dict = {"run": run_info(params)}
    per_seed, per_subject, per_dataset, confusions, curves = [], [], [], {}, []
    with atomic_dir(params.paths.evaluate_dir) as out:
        (out / "confusion").mkdir()
        for arm in params.finetune.arms:
            label = params.finetune.arm_label(arm)
            predictions = read_predictions(params, arm, subjects)
            per_seed.append(pd.DataFrame([
                {"arm": label, "seed": seed, **classification_metrics(part["label"], part["predicted"], labels)}
                for seed, part in predictions.groupby("seed", sort=True)]))
            metrics[label] = {**seed_summary(per_seed[-1]), "n": int(per_seed[-1]["n"].iloc[0])}
            per_subject.append(per_group_metrics(predictions, "subject", labels).assign(arm=label))
            per_dataset.append(per_group_metrics(predictions, "source_dataset", labels).assign(arm=label))
            confusions[label] = confusion(predictions["label"], predictions["predicted"], labels)
            pd.DataFrame({"actual": predictions["label_name"], "predicted": [names[i] for i in predictions["predicted"]]}
                         ).to_csv(out / "confusion" / f"{label}.csv", index=False)
            curves.append(mean_curve(params, arm))
        seeds_table = pd.concat(per_seed, ignore_index=True)
        paired = seeds_table.pivot(index="seed", columns="arm", values=list(SCORES))
        difference = pd.DataFrame({s: paired[s]["ma2mi"] - paired[s]["scratch"] for s in SCORES})
        metrics["ma2mi_minus_scratch"] = seed_summary(difference)
        curve_table = pd.concat(curves, axis=1).rename_axis("epoch")
        curve_table.to_csv(out / "curves.csv")
        seeds_table.to_csv(out / "per_seed.csv", index=False)
        pd.concat(per_subject, ignore_index=True).to_csv(out / "per_subject.csv", index=False)
        pd.concat(per_dataset, ignore_index=True).to_csv(out / "per_dataset.csv", index=False)
        summaries = {k: v for k, v in metrics.items() if k not in ("run", "ma2mi_minus_scratch")}
        _figures(out, confusions, summaries, seeds_table, curve_table, names)
        write_json(metrics, out / "metrics.json")
    rows = [{"arm": label, **{score: _format(summary, score) for score in SCORES}, "n": summary["n"],
             "seeds": summary["seeds"]} for label, summary in summaries.items()]
    rows.append({"arm": "ma2mi − scratch", **{s: _format(metrics["ma2mi_minus_scratch"], s) for s in SCORES},
                 "n": "", "seeds": metrics["ma2mi_minus_scratch"]["seeds"]})
    create_table_artifact(key="mer-loso-metrics", table=rows,
                          description=f"Pooled LOSO metrics, mean ± std over seeds {list(params.finetune.seeds)}, "
                                      f"protocol {params.micro.protocol}, {len(subjects)} subjects")
    for row in rows:
        get_run_logger().info("%s: accuracy %s, UF1 %s, UAR %s (seeds: %s)", row["arm"], row["accuracy"],
                              row["uf1"], row["uar"], row["seeds"])
    return metrics


def main() -> None:
    run_stage(evaluate_flow)


if __name__ == "__main__":
    main()
