"""Leave-one-subject-out (LOSO) folds (DESIGN §6).

Fold ``k`` holds out the ``k``-th subject in sorted order (``sklearn.model_selection.LeaveOneGroupOut`` with
groups = subject id). Subject ids are namespaced by dataset (``casme2/sub17``), so composites split correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import LeaveOneGroupOut

__all__ = ["LosoFold", "loso_fold", "loso_folds"]


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
