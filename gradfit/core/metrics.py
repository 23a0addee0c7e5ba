"""Classification metrics from true class indices and predicted log-probabilities, and regression metrics from
true and predicted values. NumPy only, no jax.

Conventions follow scikit-learn's defaults: the precision of a class never predicted is 0; macro averages weight
equally the classes that occur among the true or the predicted labels; ROC AUC (binary only) is the probability
that a random positive scores above a random negative, ties counting one half. Log loss uses the exact
log-probabilities (scikit-learn clips probabilities at machine epsilon). With sample weights every row counts
its weight, as scikit-learn's ``sample_weight``: weighted means, a confusion matrix of summed weights, a weighted
ROC AUC and R^2.
"""

from __future__ import annotations

import numpy as np


def classification_metrics(
    y: np.ndarray, log_probs: np.ndarray, classes: list, weights: np.ndarray | None = None
) -> dict:
    """Log loss, accuracy, per-class and macro precision/recall/F1, binary ROC AUC and the confusion matrix.

    Args:
        y: (n,) int class indices into ``classes``.
        log_probs: (n, K) log class probabilities.
        classes: the K original label values, for naming.
        weights: (n,) sample weights, or None (every row counts 1; the counts stay integers).
    """
    n, k = log_probs.shape
    predicted = log_probs.argmax(axis=1)
    counts = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    confusion = np.zeros((k, k), np.int64 if weights is None else np.float64)  # rows: true, columns: predicted
    np.add.at(confusion, (y, predicted), 1 if weights is None else counts)
    hits = np.diag(confusion).astype(np.float64)
    support, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = _ratio(hits, predicted_counts)
    recall = _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = (support + predicted_counts) > 0  # a class absent from both does not dilute the macro averages
    return {
        "rows": n,
        "log_loss": float(-(counts * log_probs[np.arange(n), y]).sum() / counts.sum()),
        "accuracy": float(hits.sum() / counts.sum()),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "roc_auc": roc_auc(y == 1, log_probs[:, 1], weights) if k == 2 else None,
        "per_class": [
            {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": s.item()}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        ],
        "confusion_matrix": confusion.tolist(),
        "classes": list(classes),
    }


def regression_metrics(y: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """RMSE, MAE and R^2 (as scikit-learn's ``r2_score``: 1 - SSE / SST; None when the targets are all equal), the
    mean squared error and the mean target, in the target's units; with ``weights`` (n,) all weighted.

    Args:
        y: (n,) true values.
        predicted: (n,) predicted values.
    """
    y, predicted = np.asarray(y, np.float64), np.asarray(predicted, np.float64)
    counts = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    total = counts.sum()
    errors = predicted - y
    squares = float((counts * np.square(errors)).sum())
    mean = float((counts * y).sum() / total)
    spread = float((counts * np.square(y - mean)).sum())
    return {
        "rows": len(y),
        "rmse": float(np.sqrt(squares / total)),
        "mae": float((counts * np.abs(errors)).sum() / total),
        "r2": 1.0 - squares / spread if spread > 0 else None,
        "mse": squares / total,
        "target_mean": mean,
    }


def roc_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """Area under the ROC curve via the Mann-Whitney U statistic with average ranks for ties; None if one class.
    With ``weights``: the weighted probability that a positive scores above a negative (ties one half)."""
    if weights is not None:
        return _weighted_auc(positive, scores, np.asarray(weights, np.float64))
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank of each distinct score, ties averaged
    rank_sum = average_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _weighted_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float | None:
    """sum over (positive i, negative j) of w_i w_j [s_i > s_j] (+ half for ties) over W_pos W_neg."""
    values, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse, weights * positive, minlength=len(values))  # weight per distinct score
    neg = np.bincount(inverse, weights * ~positive, minlength=len(values))
    if pos.sum() <= 0 or neg.sum() <= 0:
        return None
    below = np.cumsum(neg) - neg  # negative weight strictly below each score
    return float((pos * (below + neg / 2)).sum() / (pos.sum() * neg.sum()))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)
