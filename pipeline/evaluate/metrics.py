"""Micro-expression recognition metrics, on pooled LOSO predictions (DESIGN §6).

UF1 (unweighted F1) is the mean of per-class F1 and UAR (unweighted average recall) the mean of per-class
recall, as used by MEGC2019; they equal scikit-learn's macro ``f1_score`` / ``recall_score`` with every class
listed in ``labels`` (a class never predicted counts as F1 = 0, not skipped).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

__all__ = ["BASELINE_DIFFERENCE", "DIFFERENCE", "DIFFERENCES", "SCORES", "ci95", "classification_metrics", "confusion",
           "per_group_metrics", "seed_summary"]

SCORES = ("accuracy", "uf1", "uar")  # the scores of classification_metrics, in the order tables show them
DIFFERENCE = "ma2mi_minus_scratch"  # metrics.json key of the paired difference of the two MIACNet arms
BASELINE_DIFFERENCE = "ma2mi_minus_best_baseline"  # MA2MI minus the baseline arm of the best mean UF1, by seed
DIFFERENCES = (DIFFERENCE, BASELINE_DIFFERENCE)  # the metrics.json entries that are differences, not arms


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """``{'accuracy', 'uf1', 'uar', 'n'}`` of integer predictions; ``labels`` lists every class index."""
    y_true, y_pred, labels = np.asarray(y_true), np.asarray(y_pred), list(labels)
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError(f"need equally long, non-empty labels and predictions, got {len(y_true)}, {len(y_pred)}")
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "uf1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "uar": float(recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n": len(y_true),
    }


def per_group_metrics(predictions: pd.DataFrame, group: str, labels: Sequence[int]) -> pd.DataFrame:
    """One row of :func:`classification_metrics` per value of column ``group`` of ``predictions``; e.g. per subject.

    ``predictions`` has columns ``label`` and ``predicted``.
    """
    rows = [{group: key, **classification_metrics(part["label"], part["predicted"], labels)}
            for key, part in predictions.groupby(group, sort=True)]
    return pd.DataFrame(rows)


def confusion(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int]) -> np.ndarray:
    """(K, K) int counts; row = true class, column = predicted class, in ``labels`` order."""
    return confusion_matrix(y_true, y_pred, labels=list(labels))


def ci95(values: np.ndarray) -> list[float] | None:
    """The two-sided 95% Student's t confidence interval of the mean of ``values`` (n >= 2), else None.

    Example:
        >>> [round(v, 3) for v in ci95(np.array([0.1, 0.2, 0.3]))]
        [-0.048, 0.448]
    """
    if len(values) < 2:
        return None
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return [float(np.mean(values)) - half, float(np.mean(values)) + half]


def seed_summary(per_seed: pd.DataFrame, columns: Sequence[str] = ("accuracy", "uf1", "uar"),
                 interval: bool = False) -> dict[str, float | list[float] | None]:
    """Mean and sample standard deviation (ddof = 1) over seeds of each of ``columns`` of ``per_seed``.

    ``per_seed`` has one row per seed; the result is ``{'<col>': mean, '<col>_std': std, 'seeds': n}``, and with
    ``interval`` also ``'<col>_ci95': [low, high]``, the 95% confidence interval of the mean over seeds
    (Student's t with n - 1 degrees of freedom: mean ± t(0.975, n-1) std / sqrt(n)). The std and the interval
    are None with a single seed, where they are undefined.
    """
    if per_seed.empty:
        raise ValueError("seed_summary: no seed to summarise")
    summary: dict[str, float | None] = {}
    for column in columns:
        values = per_seed[column].astype(float)
        summary[column] = float(values.mean())
        summary[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        if interval:
            summary[f"{column}_ci95"] = ci95(values.to_numpy())
    summary["seeds"] = len(per_seed)
    return summary
