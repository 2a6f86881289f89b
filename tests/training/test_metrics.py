"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from fissure.training import metrics as M


def test_binary_classification_hand_computed():
    # truth 1 1 1 0 0 0 0 1 ; predicted (argmax) 1 1 0 0 1 0 0 1 -> TP 3, FN 1, FP 1, TN 3
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p1 = np.array([0.9, 0.8, 0.4, 0.1, 0.6, 0.3, 0.2, 0.7])
    m = M.classification_metrics(y, np.stack([1 - p1, p1], axis=1))
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    # positives' scores 0.9 .8 .4 .7 vs negatives .1 .6 .3 .2: 0.4 loses to 0.6 only -> 15/16
    assert m["roc_auc"] == pytest.approx(15 / 16)


def test_binary_classification_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(y * 0.3 + rng.uniform(0, 0.7, 300), 0, 1)
    p1[:20] = 0.5  # ties
    m = M.classification_metrics(y, np.stack([1 - p1, p1], axis=1))
    pred = (p1 > 1 - p1).astype(int)  # argmax, ties -> class 0
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p1))


def test_multiclass_is_macro_and_matches_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3))
    logits[np.arange(200), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = M.classification_metrics(y, probs)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    per = M.per_class_metrics(y, pred, ["a", "b", "c"])
    p, r, f, support = skm.precision_recall_fscore_support(y, pred)
    for c, name in enumerate("abc"):
        assert per[name] == pytest.approx({"precision": p[c], "recall": r[c], "f1": f[c], "support": support[c]})


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_multiclass_macro_scores_average_the_classes_present_as_balanced_accuracy_does():
    """A set holding two of a six-class model's classes (only free/ and crack/ folders): a class
    with no item has no recall, so the macro scores average the two present, and macro recall is
    balanced accuracy (sklearn's, and its macro scores over ``labels`` the classes present)."""
    rng = np.random.default_rng(2)
    y = np.array([0] * 30 + [3] * 18)  # free and crack of free, blowhole, break, crack, fray, uneven
    logits = rng.normal(size=(48, 6))
    logits[np.arange(48), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    assert set(pred) - {0, 3}, "some items are taken for an absent class"
    m = M.classification_metrics(y, probs)
    present = [0, 3]
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["recall"] == pytest.approx(m["balanced_accuracy"])
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, labels=present, average="macro"))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, labels=present, average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, labels=present, average="macro"))
    # each class is still listed, the absent ones with no support
    per = M.per_class_metrics(y, pred, ["free", "blowhole", "break", "crack", "fray", "uneven"])
    assert [per[c]["support"] for c in per] == [30, 0, 0, 18, 0, 0]


def test_balanced_accuracy_sees_a_rare_class_missed():
    # 95 of one class right, the 5 of a rare class all wrong: accuracy hides it, balanced accuracy not
    y = np.array([0] * 95 + [1] * 5)
    probs = np.tile([0.9, 0.1], (100, 1))
    m = M.classification_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(0.95)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert M.per_class_metrics(y, probs.argmax(1), ["free", "crack"])["crack"]["recall"] == 0.0


def test_roc_auc_undefined_for_one_class():
    m = M.classification_metrics([1, 1, 1], [[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    assert m["roc_auc"] is None
    assert m["recall"] == pytest.approx(2 / 3)


def test_segmentation_hand_computed():
    truth = np.array([[1, 1, 0, 0], [0, 1, 0, 0]], bool)
    probs = np.array([[0.9, 0.2, 0.7, 0.1], [0.0, 0.5, 0.4, 0.3]])  # 0.5 counts as crack
    # pred: (0,0) (0,2) (1,1) -> TP 2 [(0,0),(1,1)], FP 1 [(0,2)], FN 1 [(0,1)]
    m = M.segmentation_metrics(probs, truth)
    assert m["dice"] == pytest.approx(4 / 6)
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(m["dice"])


def test_segmentation_counts_over_the_whole_set_and_match_sklearn():
    rng = np.random.default_rng(2)
    truths = [rng.random((16, 16)) < 0.1 for _ in range(5)]
    probs = [np.clip(t * 0.3 + rng.uniform(0, 0.6, t.shape), 0, 1) for t in truths]
    counts = M.PixelCounts()
    for p, t in zip(probs, truths):
        counts.update(p, t)
    m = counts.metrics()
    y = np.concatenate([t.ravel() for t in truths])
    pred = np.concatenate([p.ravel() for p in probs]) >= 0.5
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["iou"] == pytest.approx(skm.jaccard_score(y, pred))
    # not the mean of per-image scores
    per_image = np.mean([M.segmentation_metrics(p, t)["dice"] for p, t in zip(probs, truths)])
    assert m["dice"] != pytest.approx(per_image, abs=1e-9) or len(truths) == 1


def test_segmentation_empty_agreement_and_torch_inputs():
    import torch

    assert M.segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 4), bool))["dice"] == 1.0
    m = M.segmentation_metrics(torch.ones(1, 4, 4) * 0.9, torch.zeros(1, 4, 4))
    assert m["dice"] == 0.0 and m["precision"] == 0.0


def test_pixel_pr_curve_is_monotone_in_recall():
    counts = M.PixelCounts()
    rng = np.random.default_rng(3)
    t = rng.random(5000) < 0.2
    counts.update(np.clip(t * 0.4 + rng.uniform(0, 0.6, 5000), 0, 1), t)
    precision, recall, thresholds = counts.pr_curve()
    assert recall[0] == pytest.approx(1.0)
    assert np.all(np.diff(recall) <= 1e-12)
    assert precision.max() <= 1.0


def test_best_threshold_maximises_pixel_f1():
    counts = M.PixelCounts()
    # crack pixels score 0.7, background [0, 0.6): every threshold in [0.6, 0.7] is perfect,
    # 0.5 is not (background above 0.5 counts as false positives)
    rng = np.random.default_rng(0)
    t = rng.random(4000) < 0.1
    counts.update(np.where(t, 0.7, rng.uniform(0.0, 0.6, 4000)), t)
    thr, f1 = counts.best_threshold()
    assert 0.6 <= thr <= 0.7 and f1 == pytest.approx(1.0)
    assert M.segmentation_metrics(np.where(t, 0.7, 0.55), t, threshold=0.5)["f1"] < 1.0
    # limits are honoured; an empty set keeps the default
    assert counts.best_threshold(0.2, 0.5)[0] <= 0.5
    assert M.PixelCounts().best_threshold()[0] == 0.5


def test_relaxed_scores_forgive_the_rim_not_spurious_cracks():
    truth = np.zeros((40, 40), bool)
    truth[20, 5:35] = True  # a one-pixel crack
    shifted = np.roll(truth, 1, axis=0)  # the same crack, one pixel off
    strict = M.segmentation_metrics(shifted.astype(np.float32), truth)
    assert strict["dice"] == 0.0
    rc = M.RelaxedCounts(tolerance=2)
    rc.update(shifted, truth)
    assert rc.metrics() == {"relaxed_precision": 1.0, "relaxed_recall": 1.0, "relaxed_f1": 1.0}
    # a spurious line far from the crack costs relaxed precision; a missed half costs recall
    pred = shifted.copy()
    pred[5, 5:35] = True
    pred[21, 20:35] = False
    rc = M.RelaxedCounts(tolerance=2)
    rc.update(pred, truth)
    m = rc.metrics()
    assert m["relaxed_precision"] == pytest.approx(15 / 45)
    assert m["relaxed_recall"] == pytest.approx(16 / 30)  # 15 under kept pixels + 1 diagonal (1.41 px)
    assert m["relaxed_f1"] == pytest.approx(2 * m["relaxed_precision"] * m["relaxed_recall"]
                                            / (m["relaxed_precision"] + m["relaxed_recall"]))
    empty = M.RelaxedCounts()
    empty.update(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    assert empty.metrics()["relaxed_f1"] == 1.0


def _source_pixels(pos_prob: float, neg_prob: float, pos: int, neg: int, images: int):
    from fissure.training.loop import SourcePixels

    counts = SourcePixels(images=images)
    counts.update(np.r_[np.full(pos, pos_prob), np.full(neg, neg_prob)], np.r_[np.ones(pos), np.zeros(neg)])
    return counts


def test_mask_threshold_is_tuned_on_the_real_sources_validation_pixels():
    """threshold_from real: the real sources' validation pixels pooled pick the threshold, not the
    (here far more numerous) synthetic ones; all: every pixel; no real image or no real crack
    pixel: the whole split, saying why."""
    from fissure.training.loop import select_threshold

    # real cracks at p 0.35 over background at 0.1: any threshold in (0.1, 0.35] is perfect there;
    # synthetic cracks at 0.75 over hard negatives at 0.5: only thresholds in (0.5, 0.75] are
    synth = _source_pixels(0.75, 0.5, pos=10_000, neg=10_000, images=60)
    real_a = _source_pixels(0.35, 0.1, pos=60, neg=1_000, images=45)
    real_b = _source_pixels(0.35, 0.1, pos=40, neg=500, images=5)
    by_source = {"synth": synth, "deepcrack-train": real_a, "my-survey": real_b}
    t, info = select_threshold(by_source, "real")
    assert t == pytest.approx(0.35)  # the edge of (0.1, 0.35] nearest 0.5
    assert info == {"mode": "real", "sources": ["deepcrack-train", "my-survey"], "images": 50, "dice": 1.0}
    t_all, info_all = select_threshold(by_source, "all")
    assert t_all == pytest.approx(0.505) and info_all["mode"] == "all"
    assert info_all["sources"] == ["deepcrack-train", "my-survey", "synth"] and info_all["images"] == 110
    assert select_threshold({"synth": synth}, "real") == (t_all, {
        "mode": "all", "fallback": "no real-source validation images", "sources": ["synth"], "images": 60,
        "dice": 1.0})
    crack_free = _source_pixels(0.35, 0.1, pos=0, neg=1_000, images=3)
    t_free, info_free = select_threshold({"synth": synth, "site-b": crack_free}, "real")
    assert t_free == pytest.approx(0.505) and info_free["mode"] == "all"
    assert info_free["fallback"] == "the real-source validation images hold no crack pixels"
    assert info_free["sources"] == ["site-b", "synth"]
