"""Leave-one-subject-out (LOSO) folds (DESIGN §6).

Fold ``k`` holds out the ``k``-th subject in sorted order (``sklearn.model_selection.LeaveOneGroupOut`` with
groups = subject id). Subject ids are namespaced by dataset (``casme2/sub17``), so composites split correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import LeaveOneGroupOut

__all__ = ["ALL_LABELS", "LosoFold", "fold_and_budget_problems", "label_budget", "loso_fold", "loso_folds",
           "validation_fold"]

ALL_LABELS = "all"  # the label budget of the ablation itself: every training clip


@dataclass(frozen=True)
class LosoFold:
    """One leave-one-subject-out fold: its ``index``, the held-out ``test_subject`` and both sides' row positions."""

    index: int
    test_subject: str
    train_idx: np.ndarray  # (N_train,) int row positions
    test_idx: np.ndarray  # (N_test,) int row positions


def loso_folds(subjects: pd.Series) -> list[LosoFold]:
    """All LOSO folds of a samples table's ``subject`` column, ordered by subject id."""
    groups = subjects.to_numpy()
    folds = []
    for k, (train_idx, test_idx) in enumerate(LeaveOneGroupOut().split(groups, groups=groups)):
        (test_subject,) = set(groups[test_idx])
        folds.append(LosoFold(k, str(test_subject), train_idx, test_idx))
    return folds


def loso_fold(subjects: pd.Series, index: int) -> LosoFold:
    """Fold ``index`` of :func:`loso_folds`.

    Raises:
        ValueError: ``index`` is not a fold of this data (the message gives the number of subjects, so
            ``finetune.folds`` in params.yaml can be fixed).
    """
    folds = loso_folds(subjects)
    if not 0 <= index < len(folds):
        raise ValueError(f"LOSO fold {index} does not exist: the data has {len(folds)} subjects "
                         f"(folds 0..{len(folds) - 1}); edit finetune.folds in params.yaml")
    return folds[index]


def validation_fold(fold: LosoFold, subjects: pd.Series) -> LosoFold:
    """The validation split inside ``fold``'s training subjects: a fold that never sees ``fold.test_subject``.

    The validation subject is the one after the test subject in sorted order (cyclically: the first one after the
    last), so that over all LOSO folds every subject is a validation subject once. The returned fold trains on the
    other training subjects and holds out the validation subject's rows as its ``test_idx``; the test subject's
    rows are in neither. Selection scores (docs/study.md) come from it, never from the test subject.

    Args:
        fold: a LOSO fold of the samples table (:func:`loso_fold`).
        subjects: the table's ``subject`` column.

    Returns:
        A :class:`LosoFold` with the same ``index``, ``test_subject`` = the validation subject, and row positions
        (sorted) into the same table.

    Raises:
        ValueError: fewer than 3 subjects (a fold then has no subject left to train on).

    Example:
        >>> table = pd.Series(["s1", "s1", "s2", "s3", "s3"])
        >>> split = validation_fold(loso_fold(table, 2), table)
        >>> split.test_subject, split.train_idx.tolist(), split.test_idx.tolist()
        ('s1', [2], [0, 1])
    """
    ordered = sorted(set(subjects.to_numpy()))
    if len(ordered) < 3:
        raise ValueError(f"a validation split needs at least 3 subjects (test, validation, training), got "
                         f"{len(ordered)}")
    validation = ordered[(ordered.index(fold.test_subject) + 1) % len(ordered)]
    held_out = subjects.to_numpy()[fold.train_idx] == validation
    return LosoFold(fold.index, str(validation), np.sort(fold.train_idx[~held_out]),
                    np.sort(fold.train_idx[held_out]))


def fold_and_budget_problems(subjects: pd.Series, labels: pd.Series, folds: dict[str, list[int]],
                             label_budgets: list[int]) -> list[str]:
    """What is wrong with the fold indices and label budgets of params.yaml for this samples table, in words.

    A fold index must be below the number of subjects. A label budget must be below the largest number of
    clips of one class of one subject: a budget of that many or more keeps every training clip, so its curve
    point would be the full run again, not a point of the curve.

    Args:
        subjects: the table's ``subject`` column.
        labels: the table's ``label`` (or ``label_name``) column.
        folds: params key -> fold indices, e.g. ``{"finetune.folds": [0, 1]}``.
        label_budgets: ``finetune.label_budgets``.

    Returns:
        One message per problem, naming the key (empty: nothing wrong).
    """
    problems = []
    n_subjects = subjects.nunique()
    for key, indices in folds.items():
        outside = [k for k in indices if k >= n_subjects]
        if outside:
            problems.append(f"{key}: folds {outside} do not exist: the data has {n_subjects} subjects "
                            f"(folds 0..{n_subjects - 1})")
    if label_budgets and len(subjects):
        largest = int(pd.DataFrame({"subject": subjects.to_numpy(), "label": labels.to_numpy()})
                      .value_counts().max())
        too_many = [b for b in label_budgets if b >= largest]
        if too_many:
            problems.append(f"finetune.label_budgets: {too_many} keep every training clip (no subject has more than "
                            f"{largest} clips of one class), so the curve point would be the full run; use "
                            f"budgets below {largest}")
    return problems


def label_budget(fold: LosoFold, subjects: pd.Series, labels: pd.Series, clips_per_class: int,
                 seed: int) -> LosoFold:
    """``fold`` with at most ``clips_per_class`` training clips per class and training subject (a label budget).

    The clips are drawn without replacement, in every (subject, class) group of the training rows, by a
    generator seeded with ``(seed, clips_per_class)``: every arm trained with the same seed sees the same clips,
    so the arms stay paired. A group with fewer clips keeps them all. The test rows are unchanged.

    Args:
        fold: a LOSO fold of the samples table.
        subjects: the table's ``subject`` column.
        labels: the table's ``label`` column.
        clips_per_class: the budget, >= 1.
        seed: the run's seed.

    Returns:
        A :class:`LosoFold` with the same index, test subject and test rows, and the kept training rows (sorted).

    Raises:
        ValueError: ``clips_per_class`` < 1.
    """
    if clips_per_class < 1:
        raise ValueError(f"a label budget is >= 1 clip per class and subject, got {clips_per_class}")
    rng = np.random.default_rng([seed, clips_per_class])
    train = pd.DataFrame({"row": fold.train_idx, "subject": subjects.to_numpy()[fold.train_idx],
                          "label": labels.to_numpy()[fold.train_idx]})
    kept = [rng.choice(group["row"].to_numpy(), size=min(clips_per_class, len(group)), replace=False)
            for _, group in train.groupby(["subject", "label"], sort=True)]
    return LosoFold(fold.index, fold.test_subject, np.sort(np.concatenate(kept)), fold.test_idx)
