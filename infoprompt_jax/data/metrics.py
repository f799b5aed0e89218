"""Task metrics as pure numpy functions.

All scores are fractions in [0, 1] (MCC in [-1, 1]), not percentages. Where a
score is undefined (a zero denominator) it is 0.0, as in scikit-learn, so a
degenerate early checkpoint logs a number instead of NaN.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from infoprompt_jax.data.tasks import TaskSpec

_DIRECTION_RE = re.compile(r"\(e[12],e[12]\)$")
_SEMEVAL_OTHER = "Other"


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    """Both as 1-D arrays of one length; ValueError naming the mismatch."""
    p, y = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions ({p.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if p.size == 0:
        raise ValueError("no predictions to score (empty arrays)")
    return p, y


def _f1(correct: float, predicted: float, gold: float) -> float:
    """F1 from counts: 2PR/(P+R) with P = correct/predicted, R = correct/gold."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to the label."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def binary_f1(predictions, labels, positive: int = 1) -> float:
    """F1 of the positive class: 2 TP / (2 TP + FP + FN); 0.0 with no positives."""
    p, y = _pair(predictions, labels)
    tp = np.sum((p == positive) & (y == positive))
    return _f1(float(tp), float(np.sum(p == positive)), float(np.sum(y == positive)))


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation coefficient (the multiclass form, as scikit-learn).

    With C the confusion matrix, n samples, c = trace(C), t_k / p_k the gold /
    predicted counts of class k:
    `MCC = (c n - sum_k p_k t_k) / sqrt((n^2 - sum_k p_k^2)(n^2 - sum_k t_k^2))`,
    which for two classes is `(TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))`.
    0.0 when undefined (all predictions or all labels one class).
    """
    p, y = _pair(predictions, labels)
    classes, inv = np.unique(np.concatenate([p, y]), return_inverse=True)
    p_idx, y_idx = inv[: p.size], inv[p.size :]
    k = classes.size
    t = np.bincount(y_idx, minlength=k).astype(np.float64)
    q = np.bincount(p_idx, minlength=k).astype(np.float64)
    n = float(p.size)
    c = float(np.sum(p == y))
    # Float64 throughout: n^2 overflows int32 for n > 46k (SST-2 train).
    denom = np.sqrt((n * n - q @ q) * (n * n - t @ t))
    if denom == 0.0:
        return 0.0
    return float((c * n - q @ t) / denom)


def _relation_type(label: str) -> str:
    return _DIRECTION_RE.sub("", label)


def semeval_macro_f1(pred_labels: Sequence[str], gold_labels: Sequence[str]) -> float:
    """The official SemEval-2010 Task 8 score, as a fraction.

    This is the "(9+1)-way evaluation with directionality taken into account"
    macro-F1 of the official scorer (semeval2010_task8_scorer-v1.2.pl), computed
    over relation types R = label without the `(e1,e2)` / `(e2,e1)` suffix:

    * correct(R): examples with gold type R predicted with exactly the gold label
        (right type and right direction);
    * predicted(R): examples predicted as type R in either direction, whatever
        their gold label. A prediction with the right type but the wrong direction
        therefore counts in predicted(R) (a false positive) and in gold(R) without
        being correct (a false negative); the scorer books it in its `xDIRx` column
        and adds it back to the precision denominator;
    * gold(R): examples whose gold type is R, any direction.

    P(R) = correct/predicted, R(R) = correct/gold, F1(R) = 2PR/(P+R) (0 when
    undefined), and the score is the mean of F1(R) over the relation types that
    occur in the gold labels, excluding `Other` (all 9 on the official test set).
    `Other` predictions add to no type's counts, so predicting Other for a
    relation only costs recall. Labels are compared as strings; the scorer also
    scores a predicted type absent from the gold labels only through the gold
    types' recall, and so does this.

    Args:
        pred_labels: Predicted label strings, e.g. "Cause-Effect(e2,e1)", "Other".
        gold_labels: Gold label strings, same length.

    Returns:
        Macro-F1 in [0, 1]; 0.0 when no gold label is a relation.
    """
    pred, gold = _pair(np.asarray(pred_labels, dtype=object), np.asarray(gold_labels, dtype=object))
    pred_type = np.array([_relation_type(label) for label in pred], dtype=object)
    gold_type = np.array([_relation_type(label) for label in gold], dtype=object)
    types = sorted(set(gold_type) - {_SEMEVAL_OTHER})
    if not types:
        return 0.0
    scores = []
    for r in types:
        correct = np.sum((gold_type == r) & (pred == gold))
        predicted = np.sum(pred_type == r)
        gold_count = np.sum(gold_type == r)
        scores.append(_f1(float(correct), float(predicted), float(gold_count)))
    return float(np.mean(scores))


def micro_f1(predictions, labels, negative_label=None) -> float:
    """Micro-F1 over the non-negative labels, as relation extraction reports it.

    Predictions and gold labels equal to `negative_label` (e.g. "no_relation" or
    its id) are left out of the predicted and gold counts: P = correct non-negative
    predictions / non-negative predictions, R = the same / non-negative gold.
    Without a negative label every example counts and the result equals accuracy.

    Args:
        predictions: Predicted labels (ids or strings).
        labels: Gold labels, same kind and length.
        negative_label: The "no relation" label, or None.

    Returns:
        Micro-F1 in [0, 1].
    """
    p, y = _pair(predictions, labels)
    if negative_label is None:
        return float(np.mean(p == y))
    pred_pos = p != negative_label
    gold_pos = y != negative_label
    correct = np.sum((p == y) & gold_pos)
    return _f1(float(correct), float(np.sum(pred_pos)), float(np.sum(gold_pos)))


def compute_metrics(
    task: TaskSpec, predictions: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """The task's metrics from integer predictions and labels.

    Args:
        task: The task (its `metrics`, `label_names`, `negative_label`).
        predictions: Predicted label ids, shape [N].
        labels: Gold label ids, shape [N].

    Returns:
        {metric name: value} for "accuracy" (always) and each of `task.metrics`:
        "f1" (binary, class 1 positive), "mcc", "macro_f1" (SemEval official),
        "micro_f1" (excluding `task.negative_label` when it is a task label).
    """
    p, y = _pair(predictions, labels)
    n = task.num_labels
    for name, arr in (("predictions", p), ("labels", y)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be integer label ids, got dtype {arr.dtype}")
        if n and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(
                f"{name} hold ids outside [0, {n}) for task {task.name!r}:"
                f" min {arr.min()}, max {arr.max()}"
            )
    out = {"accuracy": accuracy(p, y)}
    for metric in task.metrics:
        if metric == "f1":
            out["f1"] = binary_f1(p, y, positive=1)
        elif metric == "mcc":
            out["mcc"] = matthews_corrcoef(p, y)
        elif metric == "macro_f1":
            names = np.asarray(task.label_names, dtype=object)
            out["macro_f1"] = semeval_macro_f1(names[p], names[y])
        elif metric == "micro_f1":
            neg = task.negative_label
            neg_id = task.label_names.index(neg) if neg in task.label_names else None
            out["micro_f1"] = micro_f1(p, y, negative_label=neg_id)
        elif metric != "accuracy":
            raise ValueError(f"task {task.name!r}: unknown metric {metric!r}")
    return out
