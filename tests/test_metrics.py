"""Tests for metrics.py against hand-computed values and written-out formulas."""

import re
from collections import defaultdict

import numpy as np
import pytest

from infoprompt_jax.data import metrics, tasks

# Binary case: TP = 2 (0, 4), FP = 1 (1), TN = 2 (2, 3), FN = 1 (5).
PRED = [1, 1, 0, 0, 1, 0]
GOLD = [1, 0, 0, 0, 1, 1]


def test_accuracy_f1_mcc_by_hand():
    assert metrics.accuracy(PRED, GOLD) == pytest.approx(4 / 6)
    # F1 = 2TP / (2TP + FP + FN) = 4 / 6.
    assert metrics.binary_f1(PRED, GOLD) == pytest.approx(2 / 3)
    # Predicting all 1: TP 3, FP 3, FN 0 -> 6 / 9; class 0 then has no TP.
    assert metrics.binary_f1([1] * 6, GOLD) == pytest.approx(2 / 3)
    assert metrics.binary_f1([1] * 6, GOLD, positive=0) == 0.0
    # MCC = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 3 / 9.
    assert metrics.matthews_corrcoef(PRED, GOLD) == pytest.approx(1 / 3)
    assert metrics.matthews_corrcoef(GOLD, GOLD) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef([1 - g for g in GOLD], GOLD) == pytest.approx(-1.0)


def test_undefined_scores_are_zero():
    assert metrics.matthews_corrcoef([1, 1, 1], [0, 1, 1]) == 0.0  # One pred class.
    assert metrics.binary_f1([0, 0], [0, 0]) == 0.0  # No positives at all.


def _sklearn_binary_f1(p, y):
    tp = np.sum((p == 1) & (y == 1))
    fp = np.sum((p == 1) & (y != 1))
    fn = np.sum((p != 1) & (y == 1))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return 2 * prec * rec / (prec + rec) if prec + rec else 0.0


def _sklearn_mcc(p, y, k):
    # sklearn.metrics.matthews_corrcoef, written out from its confusion matrix.
    c = np.zeros((k, k))
    np.add.at(c, (y, p), 1)
    t_sum, p_sum = c.sum(axis=1), c.sum(axis=0)
    n_correct, n = np.trace(c), c.sum()
    cov_ytyp = n_correct * n - p_sum @ t_sum
    cov_ypyp = n * n - p_sum @ p_sum
    cov_ytyt = n * n - t_sum @ t_sum
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp)


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn_formulas(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.7, y, 1 - y)
    assert metrics.binary_f1(p, y) == pytest.approx(_sklearn_binary_f1(p, y))
    assert metrics.matthews_corrcoef(p, y) == pytest.approx(_sklearn_mcc(p, y, 2))
    y3, p3 = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    p3 = np.where(rng.random(300) < 0.5, y3, p3)
    assert metrics.matthews_corrcoef(p3, y3) == pytest.approx(_sklearn_mcc(p3, y3, 4))


# SemEval-2010 Task 8, hand-checked (CE = Cause-Effect, CW = Component-Whole,
# MT = Message-Topic):
#   gold             pred
#   CE(e1,e2)        CE(e1,e2)   correct
#   CE(e2,e1)        CE(e1,e2)   wrong direction: counts as predicted CE, not correct
#   CE(e1,e2)        Other       missed
#   Other            CE(e2,e1)   false positive for CE
#   CW(e1,e2)        CW(e1,e2)   correct
#   CW(e2,e1)        CE(e1,e2)   wrong type: FP for CE, FN for CW
#   Other            Other       counts nowhere
#   MT(e1,e2)        Other       missed
# CE: correct 1, predicted 4 (rows 1, 2, 4, 6), gold 3 -> P 1/4, R 1/3, F1 2/7.
# CW: correct 1, predicted 1, gold 2 -> P 1, R 1/2, F1 2/3.
# MT: correct 0 -> F1 0.
# Official macro-F1 over the gold types CE, CW, MT = (2/7 + 2/3 + 0) / 3 = 20/63.
SEMEVAL_GOLD = [
    "Cause-Effect(e1,e2)",
    "Cause-Effect(e2,e1)",
    "Cause-Effect(e1,e2)",
    "Other",
    "Component-Whole(e1,e2)",
    "Component-Whole(e2,e1)",
    "Other",
    "Message-Topic(e1,e2)",
]
SEMEVAL_PRED = [
    "Cause-Effect(e1,e2)",
    "Cause-Effect(e1,e2)",
    "Other",
    "Cause-Effect(e2,e1)",
    "Component-Whole(e1,e2)",
    "Cause-Effect(e1,e2)",
    "Other",
    "Other",
]


def test_semeval_macro_f1_by_hand():
    assert metrics.semeval_macro_f1(SEMEVAL_PRED, SEMEVAL_GOLD) == pytest.approx(20 / 63)
    assert metrics.semeval_macro_f1(SEMEVAL_GOLD, SEMEVAL_GOLD) == pytest.approx(1.0)
    # Direction matters: all directions flipped scores 0.
    flipped = [_flip(g) for g in SEMEVAL_GOLD]
    assert metrics.semeval_macro_f1(flipped, SEMEVAL_GOLD) == 0.0


def _flip(label):
    """The same relation in the other direction; Other stays Other."""
    swap = {"(e1,e2)": "(e2,e1)", "(e2,e1)": "(e1,e2)"}
    return re.sub(r"\(e[12],e[12]\)$", lambda m: swap[m.group(0)], label)


def _perl_scorer(pred, gold):
    """semeval2010_task8_scorer-v1.2.pl, official part (iii), transcribed."""

    def strip(label):
        return re.sub(r"\(e[12],e[12]\)$", "", label)

    conf = defaultdict(lambda: defaultdict(int))
    proposed, answer = defaultdict(int), defaultdict(int)
    for p, g in zip(pred, gold):
        pn, gn = strip(p), strip(g)
        if p == g:
            conf[pn][gn] += 1
            proposed[pn] += 1
        elif pn == gn:
            conf["WRONG_DIR"][gn] += 1
            proposed["WRONG_DIR"] += 1
        else:
            conf[pn][gn] += 1
            proposed[pn] += 1
        answer[gn] += 1
    f1s = []
    for r in sorted(answer):
        if r == "Other":
            continue
        wrong = conf["WRONG_DIR"][r]
        prec = 0 if proposed[r] == 0 else conf[r][r] / (proposed[r] + wrong)
        rec = conf[r][r] / answer[r]
        f1s.append(0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
    return sum(f1s) / len(f1s)


@pytest.mark.parametrize("seed", range(3))
def test_semeval_matches_official_scorer_logic(seed):
    rng = np.random.default_rng(seed)
    labels = np.array(tasks.SEMEVAL_LABELS, dtype=object)
    gold = labels[rng.integers(0, 19, 400)]
    # Mostly-right predictions with some flipped directions and random errors.
    pred = np.where(rng.random(400) < 0.5, gold, labels[rng.integers(0, 19, 400)])
    flip = rng.random(400) < 0.15
    pred = [_flip(p) if f else p for p, f in zip(pred, flip)]
    assert metrics.semeval_macro_f1(pred, list(gold)) == pytest.approx(
        _perl_scorer(pred, list(gold))
    )
    assert metrics.semeval_macro_f1(SEMEVAL_PRED, SEMEVAL_GOLD) == pytest.approx(
        _perl_scorer(SEMEVAL_PRED, SEMEVAL_GOLD)
    )


def test_micro_f1_excludes_negative_label():
    # 0 = no_relation. Correct non-negative: idx 1, 3 -> 2; predicted non-negative
    # 3 (idx 1, 2, 3); gold non-negative 4 (idx 1-4). P 2/3, R 1/2, F1 4/7.
    pred, gold = [0, 1, 2, 2, 0], [0, 1, 1, 2, 2]
    assert metrics.micro_f1(pred, gold, negative_label=0) == pytest.approx(4 / 7)
    assert metrics.micro_f1(pred, gold) == pytest.approx(metrics.accuracy(pred, gold))
    names = np.array(["no_relation", "PHYS", "ART"])
    assert metrics.micro_f1(names[pred], names[gold], "no_relation") == pytest.approx(4 / 7)


def test_compute_metrics_per_task():
    p, y = np.array(PRED), np.array(GOLD)
    assert metrics.compute_metrics(tasks.get_task("rte"), p, y) == pytest.approx(
        {"accuracy": 4 / 6}
    )
    assert metrics.compute_metrics(tasks.get_task("mrpc"), p, y) == pytest.approx(
        {"accuracy": 4 / 6, "f1": 2 / 3}
    )
    assert metrics.compute_metrics(tasks.get_task("cola"), p, y) == pytest.approx(
        {"accuracy": 4 / 6, "mcc": 1 / 3}
    )
    semeval = tasks.get_task("semeval")

    def ids(labels):
        return np.array([semeval.label_id(label) for label in labels])

    out = metrics.compute_metrics(semeval, ids(SEMEVAL_PRED), ids(SEMEVAL_GOLD))
    assert out == pytest.approx({"accuracy": 3 / 8, "macro_f1": 20 / 63})
    ace = tasks.get_task("ace_re").with_labels(("no_relation", "PHYS", "ART"))
    out = metrics.compute_metrics(ace, np.array([0, 1, 2, 2, 0]), np.array([0, 1, 1, 2, 2]))
    assert out == pytest.approx({"accuracy": 3 / 5, "micro_f1": 4 / 7})


def test_compute_metrics_rejects_bad_input():
    rte = tasks.get_task("rte")
    with pytest.raises(ValueError, match="differ in length"):
        metrics.compute_metrics(rte, np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        metrics.compute_metrics(rte, np.array([0, 2]), np.array([0, 1]))
