"""Binary classification metrics (viral = 1 is the positive class), numpy only.

Definitions as scikit-learn's with ``average="binary"`` and ``zero_division=0``;
ROC AUC is the Mann-Whitney statistic with tied scores counted half, ``None`` when
one class is absent (it is undefined then).

>>> m = binary_metrics(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.6, 0.1]))
>>> m["accuracy"], m["precision"], m["recall"], m["roc_auc"]
(0.5, 0.5, 0.5, 0.75)
>>> m["confusion"]
{'tn': 1, 'fp': 1, 'fn': 1, 'tp': 1}
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["METRICS", "binary_metrics", "roc_auc", "roc_curve"]

METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for binary ``labels``; None with one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average rank (1-based) over each run of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for lo, hi in zip(starts, ends, strict=True):
        ranks[order[lo:hi]] = (lo + 1 + hi) / 2
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct score threshold."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s = np.asarray(scores, dtype=np.float64)[order]
    y = labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    p, n = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n], np.r_[0.0, tp / p]


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, predicted: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, ROC AUC and the confusion matrix.

    ``scores``: the viral score of each item (for the AUC); ``predicted``: the calls,
    given by callers whose rule is not ``scores >= 0.5``.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    called = (scores >= 0.5) if predicted is None else np.asarray(predicted).astype(bool)
    tp = int((called & labels).sum())
    fp = int((called & ~labels).sum())
    fn = int((~called & labels).sum())
    tn = int((~called & ~labels).sum())
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "positives": tp + fn,
        "negatives": tn + fp,
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(labels, scores),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }
