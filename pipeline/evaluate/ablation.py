"""The ablation, side by side, on pooled LOSO predictions (DESIGN §6): the logic of the ``evaluate`` stage.

For each arm (MIACNet+MA2MI ``ma2mi``, MIACNet from ``scratch``, and the baseline, e.g. ``mmnet``, when it is
on) and each seed, the predictions of all folds are pooled and scored (accuracy, UF1, UAR); each arm then gets
the mean ± sample std over seeds, and the paired difference MA2MI − scratch (same seed) gets its own mean ± std.
A seed whose folds do not cover every subject exactly once is refused: pooled metrics would be partial.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from pipeline.arms import ARMS, active_arms, arm_label
from pipeline.config import Params
from pipeline.data.loso import ALL_LABELS
from pipeline.evaluate.metrics import (
    BASELINE_DIFFERENCE,
    DIFFERENCE,
    DIFFERENCES,
    SCORES,
    classification_metrics,
    confusion,
    per_group_metrics,
    seed_summary,
)
from pipeline.evaluate.summary import arm_entries, format_mean_std
from pipeline.io import atomic_path

__all__ = ["Ablation", "ablation_inputs", "check_coverage", "evaluate_ablation",
           "format_score", "label_efficiency", "mean_curve", "read_predictions", "run_info", "save_figures",
           "save_label_efficiency_figure", "summary_rows"]



def check_coverage(predictions: pd.DataFrame, arm: str, seeds: Sequence[int], subjects: set[str],
                   folds: Sequence[int], budgets: Sequence[str] = (ALL_LABELS,)) -> pd.DataFrame:
    """The predictions of ``seeds`` and ``budgets``, after checking that each run covers every subject once.

    Args:
        predictions: every fold's predictions of one arm (``seed``, ``label_budget``, ``subject``, ``sample_id``,
            …).
        arm: names the arm in messages.
        seeds: the seeds that must each cover every subject.
        subjects: every subject of the samples table.
        folds: the configured folds, for the message.
        budgets: the label budgets (``'all'`` and the budgets of the curve, as text) that must each be there.

    Returns:
        The rows of ``seeds`` and ``budgets``.

    Raises:
        ValueError: a (budget, seed) has no predictions, misses a subject, or predicts a sample twice (the
            message names the arm, the seed, the budget and the missing subjects).
    """
    for budget in budgets:
        for seed in seeds:
            part = predictions[(predictions["seed"] == seed) & (predictions["label_budget"] == budget)]
            run = f"seed {seed}" + ("" if budget == ALL_LABELS else f", label budget {budget}")
            if part.empty:
                raise ValueError(f"{arm}: no predictions for {run}; run `dvc repro finetune_{arm}`")
            missing = sorted(subjects - set(part["subject"]))
            if missing or part["sample_id"].duplicated().any():
                raise ValueError(f"{arm}, {run}: finetune.folds {list(folds)} do not cover each of the "
                                 f"{len(subjects)} subjects exactly once (missing: {missing}); edit finetune.folds")
    return predictions[predictions["seed"].isin(seeds) & predictions["label_budget"].isin(budgets)]


def read_predictions(params: Params, arm: str) -> pd.DataFrame:
    """Concatenate the fold predictions of ``arm`` (every seed).

    Raises:
        FileNotFoundError: a fold's predictions are missing.
    """
    parts = []
    for fold in params.finetune.folds:
        path = params.paths.finetune_dir / arm / f"fold{fold}" / "predictions.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `dvc repro finetune_{arm}`")
        parts.append(pd.read_parquet(path))
    return pd.concat(parts, ignore_index=True)


def mean_curve(params: Params, arm: str) -> pd.Series:
    """Mean over folds and seeds of the per-epoch training loss that DVCLive logged (index: epoch, 1-based)."""
    curves = []
    for fold in params.finetune.folds:
        for seed in params.finetune.recipe.seeds:
            tsv = (params.paths.finetune_dir / arm / f"fold{fold}" / "dvclive" / f"seed{seed}" / "plots" / "metrics"
                   / "train" / "loss.tsv")
            curves.append(pd.read_csv(tsv, sep="\t").set_index("step")["loss"])
    curve = pd.concat(curves, axis=1).mean(axis=1)
    curve.index = curve.index + 1
    return curve.rename(arm_label(params.finetune, arm))


def run_info(params: Params) -> dict:
    """Seeds, git revision, protocol and a hash of the params that shape the results."""
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    shaping = {k: params.model_dump(mode="json")[k] for k in ("micro", "model", "pretrain", "finetune")}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
    return {"seeds": list(params.finetune.recipe.seeds), "git_revision": revision, "params_hash": digest,
            "protocol": params.micro.protocol}


@dataclass
class Ablation:
    """What :func:`evaluate_ablation` computed.

    Attributes:
        metrics: ``<label>.{accuracy, uf1, uar}`` (means over seeds), ``<label>.<score>_std``, ``<label>.n``
            (samples per seed), ``<label>.seeds``; ``ma2mi_minus_scratch.*`` (paired by seed, with
            ``<score>_ci95``: the 95% t interval of the mean difference over seeds); with a baseline arm,
            ``ma2mi_minus_best_baseline.*`` the same against the baseline of the best mean UF1 (its label in
            ``ma2mi_minus_best_baseline.baseline``).
        per_seed: one row per arm label and seed: ``arm, seed, accuracy, uf1, uar, n``.
        per_subject, per_dataset: one row per arm and subject / source dataset, over all seeds' predictions.
        confusions: arm label -> (K, K) counts over all seeds' predictions.
        confusion_rows: arm label -> ``actual, predicted`` class names, one row per prediction (DVC's plot).
    """

    metrics: dict
    per_seed: pd.DataFrame
    per_subject: pd.DataFrame
    per_dataset: pd.DataFrame
    confusions: dict[str, np.ndarray]
    confusion_rows: dict[str, pd.DataFrame]


def evaluate_ablation(predictions: Mapping[str, pd.DataFrame], classes: Sequence[str],
                      baselines: Sequence[str] = ()) -> Ablation:
    """Score each arm's pooled LOSO predictions per seed; pair MA2MI with scratch and with the best baseline.

    Args:
        predictions: arm label -> predictions (``seed``, ``label_budget``, ``label``, ``predicted``,
            ``label_name``, ``subject``, ``source_dataset``), checked by :func:`check_coverage`; labels ``ma2mi``
            and ``scratch`` must be among them for the paired difference. Only the ``'all'`` budget counts here.
        classes: class names in label order.
        baselines: the labels of ``predictions`` that are baseline arms (e.g. ``['ststnet']``); MA2MI is paired
            by seed with the one of the highest mean UF1 over seeds (the first on a tie). Empty: no such entry.

    Returns:
        The :class:`Ablation`.

    Raises:
        KeyError: a label of ``baselines`` has no predictions.
    """
    labels = list(range(len(classes)))
    metrics: dict = {}
    per_seed, per_subject, per_dataset, confusions, rows = [], [], [], {}, {}
    for label, table in predictions.items():
        table = table[table["label_budget"] == ALL_LABELS]
        per_seed.append(pd.DataFrame([
            {"arm": label, "seed": seed, **classification_metrics(part["label"], part["predicted"], labels)}
            for seed, part in table.groupby("seed", sort=True)]))
        metrics[label] = {**seed_summary(per_seed[-1]), "n": int(per_seed[-1]["n"].iloc[0])}
        per_subject.append(per_group_metrics(table, "subject", labels).assign(arm=label))
        per_dataset.append(per_group_metrics(table, "source_dataset", labels).assign(arm=label))
        confusions[label] = confusion(table["label"], table["predicted"], labels)
        rows[label] = pd.DataFrame({"actual": table["label_name"].to_numpy(),
                                    "predicted": [classes[i] for i in table["predicted"]]})
    seeds_table = pd.concat(per_seed, ignore_index=True)
    paired = seeds_table.pivot(index="seed", columns="arm", values=list(SCORES))
    metrics[DIFFERENCE] = seed_summary(pd.DataFrame({s: paired[s]["ma2mi"] - paired[s]["scratch"] for s in SCORES}),
                                       interval=True)
    if baselines:
        best = max(baselines, key=lambda label: metrics[label]["uf1"])  # max keeps the first of equal ones
        metrics[BASELINE_DIFFERENCE] = {
            **seed_summary(pd.DataFrame({s: paired[s]["ma2mi"] - paired[s][best] for s in SCORES}), interval=True),
            "baseline": best}
    return Ablation(metrics, seeds_table, pd.concat(per_subject, ignore_index=True),
                    pd.concat(per_dataset, ignore_index=True), confusions, rows)


def label_efficiency(predictions: Mapping[str, pd.DataFrame], classes: Sequence[str],
                     clips_per_class_all: float) -> tuple[pd.DataFrame, dict]:
    """The label-efficiency curve: pooled LOSO scores per arm, label budget and seed, MA2MI vs scratch.

    Args:
        predictions: as for :func:`evaluate_ablation`, all budgets; arms without budgets other than ``'all'``
            (the baseline) are left out.
        classes: class names in label order.
        clips_per_class_all: the mean number of clips per class and subject in the data: the x of ``'all'``.

    Returns:
        ``(per_seed, summary)``: ``per_seed`` has one row per arm, budget and seed (``arm, label_budget,
        clips_per_class, seed, accuracy, uf1, uar, n``); ``summary`` maps ``'<arm>'`` and ``'ma2mi_minus_scratch'``
        to ``{budget: seed_summary}`` (the difference paired by seed, with 95% intervals). Empty without budgets.
    """
    labels = list(range(len(classes)))
    rows = []
    for label, table in predictions.items():
        if set(table["label_budget"]) == {ALL_LABELS}:
            continue
        for (budget, seed), part in table.groupby(["label_budget", "seed"], sort=True):
            x = clips_per_class_all if budget == ALL_LABELS else float(budget)
            rows.append({"arm": label, "label_budget": budget, "clips_per_class": x, "seed": seed,
                         **classification_metrics(part["label"], part["predicted"], labels)})
    per_seed = pd.DataFrame(rows, columns=["arm", "label_budget", "clips_per_class", "seed", *SCORES, "n"])
    summary: dict = {}
    for (arm, budget), part in per_seed.groupby(["arm", "label_budget"], sort=True):
        summary.setdefault(arm, {})[budget] = seed_summary(part)
    arms = set(per_seed["arm"])
    if {"ma2mi", "scratch"} <= arms:
        for budget, part in per_seed.groupby("label_budget", sort=True):
            paired = part.pivot(index="seed", columns="arm", values=list(SCORES))
            summary.setdefault(DIFFERENCE, {})[budget] = seed_summary(
                pd.DataFrame({s: paired[s]["ma2mi"] - paired[s]["scratch"] for s in SCORES}), interval=True)
    return per_seed, summary


def format_score(summary: Mapping, score: str) -> str:
    """``'0.6630 ± 0.0160'`` (or ``'0.6630'`` for a single seed) of ``summary[score]``."""
    return format_mean_std(summary, score, digits=4)


def summary_rows(metrics: Mapping) -> list[dict]:
    """One row per arm label, then the paired difference (a table for people: the Prefect artifact, the log).

    Columns: ``arm``, ``accuracy``, ``uf1``, ``uar`` as ``mean ± std``, ``n``, ``seeds``.
    """
    rows = [{"arm": label, **{s: format_score(summary, s) for s in SCORES}, "n": summary["n"],
             "seeds": summary["seeds"]} for label, summary in arm_entries(metrics).items()]
    rows.append({"arm": "ma2mi − scratch", **{s: format_score(metrics[DIFFERENCE], s) for s in SCORES}, "n": "",
                 "seeds": metrics[DIFFERENCE]["seeds"]})
    if BASELINE_DIFFERENCE in metrics:
        entry = metrics[BASELINE_DIFFERENCE]
        rows.append({"arm": f"ma2mi − {entry['baseline']}", **{s: format_score(entry, s) for s in SCORES}, "n": "",
                     "seeds": entry["seeds"]})
    return rows


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def save_figures(out: Path, ablation: Ablation, curves: pd.DataFrame, classes: Sequence[str]) -> None:
    """Write the confusion, ablation and curve figures into ``out``.

    ``confusion.png``: one matrix per arm; ``ablation.png``: mean ± std bars, one dot per seed; ``curves.png``:
    training loss per epoch, one line per arm.
    """
    summaries = {k: v for k, v in ablation.metrics.items() if k not in DIFFERENCES}
    per_seed = ablation.per_seed
    # matplotlib's object API (Figure), not pyplot: no backend and no global figure state
    fig = Figure(figsize=(4.5 * len(ablation.confusions), 4))
    axes = fig.subplots(1, len(ablation.confusions), squeeze=False)
    for ax, (label, matrix) in zip(axes[0], ablation.confusions.items(), strict=True):
        ConfusionMatrixDisplay(matrix, display_labels=list(classes)).plot(ax=ax, colorbar=False)
        ax.set_title(f"{label}: UF1 {summaries[label]['uf1']:.3f}, UAR {summaries[label]['uar']:.3f}\n"
                     f"(all {summaries[label]['seeds']} seeds' predictions)", fontsize=9)
    fig.tight_layout()
    _save(fig, out / "confusion.png")

    fig = Figure(figsize=(1.6 + 1.4 * len(SCORES) * len(summaries) / 2, 4))
    ax = fig.subplots()
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

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for label, curve in curves.items():
        ax.plot(curve.index, curve.to_numpy(), marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="training loss (mean over LOSO folds and seeds)",
           title="Fine-tuning: training loss per epoch")
    ax.legend()
    _save(fig, out / "curves.png")


def save_label_efficiency_figure(out: Path, per_seed: pd.DataFrame) -> None:
    """Write ``label_efficiency.png``: pooled LOSO UF1 against the training clips per class and subject.

    One line per arm, mean ± std over seeds, each seed a dot.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for arm, part in per_seed.groupby("arm", sort=True):
        stats = part.groupby("clips_per_class")["uf1"].agg(["mean", "std"]).sort_index()
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=arm)
        ax.plot(part["clips_per_class"], part["uf1"], ".", color="k", markersize=3, alpha=0.5)
    ax.set(xlabel="training clips per class and subject", ylabel="pooled LOSO UF1", ylim=(0, 1),
           title="Label efficiency: mean ± std over seeds (dots: seeds)")
    ax.legend()
    _save(fig, out / "label_efficiency.png")


def ablation_inputs(params: Params, subjects: set[str]) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Every active arm's checked predictions and mean training curve, by arm label.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_predictions` and :func:`check_coverage`.
    """
    predictions, curves = {}, []
    for arm in active_arms(params.finetune):
        budgets = [ALL_LABELS, *(str(b) for b in params.finetune.label_budgets if ARMS[arm].label_efficiency)]
        table = check_coverage(read_predictions(params, arm), arm, params.finetune.recipe.seeds, subjects,
                               params.finetune.folds, budgets)
        predictions[arm_label(params.finetune, arm)] = table
        curves.append(mean_curve(params, arm))
    return predictions, pd.concat(curves, axis=1).rename_axis("epoch")
