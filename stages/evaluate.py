"""DVC stage ``evaluate``: pooled LOSO metrics of every initialisation (DESIGN §6).

Outputs under ``paths.evaluate_dir``: ``metrics.json`` (accuracy, UF1, UAR per init on the pooled predictions
of all folds, the MA2MI − scratch difference, and the seed, git revision and params hash), ``per_subject.csv``,
``confusion_<init>.csv`` (DVC confusion plots), ``confusion.png``, ``curves.csv`` / ``curves.png`` (mean
per-epoch training loss over folds). Also a Prefect table artifact. Run: ``python -m stages.evaluate``.
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
import pandas as pd  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from pipeline.config import Params, load_params  # noqa: E402
from pipeline.ingest_micro import read_classes  # noqa: E402
from pipeline.io import atomic_dir, atomic_path, write_json  # noqa: E402
from pipeline.metrics import classification_metrics, confusion, per_group_metrics  # noqa: E402


def read_predictions(params: Params, init: str, subjects: set[str]) -> pd.DataFrame:
    """Concatenate the fold predictions of ``init``.

    Raises:
        FileNotFoundError: a fold's predictions are missing.
        ValueError: the folds do not cover every subject exactly once (pooled metrics would be partial).
    """
    parts = []
    for fold in params.finetune.folds:
        path = params.paths.finetune_dir / init / f"fold{fold}" / "predictions.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `dvc repro finetune_{init}`")
        parts.append(pd.read_parquet(path))
    predictions = pd.concat(parts, ignore_index=True)
    missing = sorted(subjects - set(predictions["subject"]))
    if missing or predictions["sample_id"].duplicated().any():
        raise ValueError(f"{init}: finetune.folds {params.finetune.folds} do not cover each of the "
                         f"{len(subjects)} subjects exactly once (missing: {missing}); edit finetune.folds")
    return predictions


def mean_curve(params: Params, init: str) -> pd.Series:
    """Mean over folds of the per-epoch training loss that DVCLive logged (index: epoch, 1-based)."""
    curves = []
    for fold in params.finetune.folds:
        tsv = params.paths.finetune_dir / init / f"fold{fold}" / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv"
        curves.append(pd.read_csv(tsv, sep="\t").set_index("step")["loss"])
    curve = pd.concat(curves, axis=1).mean(axis=1)
    curve.index = curve.index + 1
    return curve.rename(init)


def run_info(params: Params) -> dict:
    """Seed, git revision and a hash of the params that shape the results."""
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    shaping = {k: params.model_dump(mode="json")[k] for k in ("micro", "model", "pretrain", "finetune")}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
    return {"seed": params.finetune.seed, "git_revision": revision, "params_hash": digest}


def _figures(out: Path, confusions: dict, curves: pd.DataFrame, names: tuple[str, ...]) -> None:
    fig, axes = plt.subplots(1, len(confusions), figsize=(4.5 * len(confusions), 4), squeeze=False)
    for ax, (init, (matrix, scores)) in zip(axes[0], confusions.items()):
        ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=ax, colorbar=False)
        ax.set_title(f"{init}: UF1 {scores['uf1']:.3f}, UAR {scores['uar']:.3f}")
    fig.tight_layout()
    with atomic_path(out / "confusion.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    ax = curves.plot(xlabel="epoch", ylabel="training loss (mean over LOSO folds)", figsize=(6, 4), marker="o",
                     title="Fine-tuning: training loss per epoch")
    with atomic_path(out / "curves.png") as tmp:
        ax.figure.savefig(tmp, format="png", dpi=120)
    plt.close(ax.figure)


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml") -> dict:
    """Pool every fold's predictions per init and write metrics, tables and plots."""
    params = load_params(params_path)
    names = read_classes(params.paths.micro_dir)
    labels = list(range(len(names)))
    subjects = set(pd.read_parquet(params.paths.micro_dir / "samples.parquet", columns=["subject"])["subject"])
    metrics: dict = {"run": run_info(params)}
    per_subject, confusions, curves = [], {}, []
    with atomic_dir(params.paths.evaluate_dir) as out:
        for init in params.finetune.inits:
            predictions = read_predictions(params, init, subjects)
            metrics[init] = classification_metrics(predictions["label"], predictions["predicted"], labels)
            per_subject.append(per_group_metrics(predictions, "subject", labels).assign(init=init))
            confusions[init] = (confusion(predictions["label"], predictions["predicted"], labels), metrics[init])
            pd.DataFrame({"actual": predictions["label_name"], "predicted": [names[i] for i in predictions["predicted"]]}
                         ).to_csv(out / f"confusion_{init}.csv", index=False)
            curves.append(mean_curve(params, init))
        if {"ma2mi", "scratch"} <= set(params.finetune.inits):
            metrics["ma2mi_minus_scratch"] = {k: metrics["ma2mi"][k] - metrics["scratch"][k]
                                              for k in ("accuracy", "uf1", "uar")}
        curve_table = pd.concat(curves, axis=1).rename_axis("epoch")
        curve_table.to_csv(out / "curves.csv")
        pd.concat(per_subject, ignore_index=True).to_csv(out / "per_subject.csv", index=False)
        _figures(out, confusions, curve_table, names)
        write_json(metrics, out / "metrics.json")
    rows = [{"init": init, **{k: round(v, 4) for k, v in metrics[init].items()}} for init in params.finetune.inits]
    create_table_artifact(key="mer-loso-metrics", table=rows,
                          description=f"Pooled LOSO metrics, protocol {params.micro.protocol}, "
                                      f"{len(subjects)} subjects, seed {params.finetune.seed}")
    for row in rows:
        get_run_logger().info("%s: accuracy %.4f, UF1 %.4f, UAR %.4f (n=%d)", row["init"], row["accuracy"],
                              row["uf1"], row["uar"], row["n"])
    return metrics


def main() -> None:
    run_stage(evaluate_flow)


if __name__ == "__main__":
    main()
