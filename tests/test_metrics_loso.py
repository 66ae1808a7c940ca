"""UF1/UAR equal sklearn's macro scores; LOSO folds never share a subject between train and test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, recall_score

from pipeline.data.loso import loso_fold, loso_folds
from pipeline.evaluate.metrics import classification_metrics, confusion, per_group_metrics


def _uf1_uar_by_hand(y_true, y_pred, k):
    f1s, recalls = [], []
    for c in range(k):
        tp = np.sum((y_true == c) & (y_pred == c))
        fp = np.sum((y_true != c) & (y_pred == c))
        fn = np.sum((y_true == c) & (y_pred != c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0)
        recalls.append(tp / (tp + fn) if (tp + fn) else 0.0)
    return np.mean(f1s), np.mean(recalls)


@pytest.mark.parametrize("seed", range(5))
def test_uf1_uar_equal_sklearn_macro_and_hand_computation(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, 60)
    y_pred = np.where(rng.random(60) < 0.6, y_true, rng.integers(0, 3, 60))
    scores = classification_metrics(y_true, y_pred, labels=[0, 1, 2])
    assert scores["uf1"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro"))
    assert scores["uar"] == pytest.approx(recall_score(y_true, y_pred, labels=[0, 1, 2], average="macro"))
    uf1, uar = _uf1_uar_by_hand(y_true, y_pred, 3)
    assert scores["uf1"] == pytest.approx(uf1) and scores["uar"] == pytest.approx(uar)
    assert scores["accuracy"] == pytest.approx(np.mean(y_true == y_pred))


def test_a_class_never_predicted_counts_as_zero():
    y_true, y_pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 1, 1])
    scores = classification_metrics(y_true, y_pred, labels=[0, 1, 2])
    assert scores["uar"] == pytest.approx((1 + 1 + 0) / 3)
    assert scores["uf1"] == pytest.approx((1 + 2 * 2 / (2 * 2 + 2) + 0) / 3)
    assert confusion(y_true, y_pred, [0, 1, 2]).tolist() == [[2, 0, 0], [0, 2, 0], [0, 2, 0]]


def test_per_group_metrics_one_row_per_subject():
    table = pd.DataFrame({"subject": ["a", "a", "b"], "label": [0, 1, 2], "predicted": [0, 1, 0]})
    rows = per_group_metrics(table, "subject", [0, 1, 2])
    assert rows["subject"].tolist() == ["a", "b"]
    assert rows["accuracy"].tolist() == [1.0, 0.0]


def test_loso_never_shares_a_subject_and_tests_each_once():
    subjects = pd.Series(["casme2/sub02", "samm/006", "casme2/sub01", "samm/006", "casme2/sub02", "smic/s3"])
    folds = loso_folds(subjects)
    assert [f.test_subject for f in folds] == sorted(set(subjects))
    tested = []
    for fold in folds:
        train, test = set(subjects.iloc[fold.train_idx]), set(subjects.iloc[fold.test_idx])
        assert test == {fold.test_subject}
        assert not train & test
        assert len(fold.train_idx) + len(fold.test_idx) == len(subjects)
        tested += list(fold.test_idx)
    assert sorted(tested) == list(range(len(subjects)))


def test_fold_out_of_range_names_the_fix():
    with pytest.raises(ValueError, match=r"finetune.folds"):
        loso_fold(pd.Series(["a", "b"]), 2)
