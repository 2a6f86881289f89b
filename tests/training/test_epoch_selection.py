"""The segmenter's best epoch (kept weights, early stopping) follows the same validation images as
its mask threshold: the real sources' (select_on / threshold_from real) unless there are fewer than
min_real_val_images of them; hand-made per-epoch pixel counts, no training."""

from __future__ import annotations

import numpy as np
import pytest

from fissure.training import modelcard
from fissure.training.config import TrainConfig, load_config
from fissure.training.loop import EpochSelector, SourcePixels, merge_counts, select_threshold
from fissure.training.run import selection_notes


def _pixels(dice: float, pos: int, images: int) -> SourcePixels:
    """Counts of ``images`` images with ``pos`` crack pixels whose Dice at 0.5 is ``dice``: a share
    ``dice`` of the crack pixels found (p 0.9), as many false alarms as misses (p 0.9 on background)."""
    found = round(dice * pos)
    probs = np.r_[np.full(found, 0.9), np.full(pos - found, 0.1), np.full(pos - found, 0.9), np.full(4 * pos, 0.1)]
    truth = np.r_[np.ones(pos), np.zeros(pos - found + 4 * pos)]
    counts = SourcePixels(images=images)
    counts.update(probs, truth)
    return counts


# Per epoch, Dice at 0.5 of (synthetic, real) validation images. The synthetic images hold 20x the
# real crack pixels, so the whole split's Dice follows them: best at epoch 3; the real images' at 4.
EPOCHS = [(0.6, 0.3), (0.8, 0.5), (0.9, 0.4), (0.7, 0.7)]


def _epochs(real_images: int = 12):
    for synth, real in EPOCHS:
        by_source = {"synth": _pixels(synth, 10_000, 60), "deepcrack-train": _pixels(real, 500, real_images)}
        yield by_source, merge_counts(by_source.values()).metrics()  # what validate() returns


def _select(mode: str, real_images: int = 12, min_images: int = 10, patience: int = 10) -> tuple[EpochSelector, int]:
    """Run the selector as the training loop does; (selector, epochs run)."""
    sel = EpochSelector("dice", mode=mode, min_images=min_images, min_delta=1e-4, patience=patience)
    ran = 0
    for epoch, (by_source, metrics) in enumerate(_epochs(real_images), start=1):
        sel.update(epoch, metrics, by_source)
        ran = epoch
        if sel.stop(epoch):
            break
    return sel, ran


def test_hand_made_counts_have_the_intended_dice():
    for (synth, real), (by_source, whole) in zip(EPOCHS, _epochs()):
        assert by_source["synth"].metrics()["dice"] == pytest.approx(synth)
        assert by_source["deepcrack-train"].metrics()["dice"] == pytest.approx(real)
    assert [round(w["dice"], 3) for _, w in _epochs()] == [0.586, 0.786, 0.876, 0.7]


def test_best_epoch_follows_the_real_sources_or_the_whole_split():
    real, _ = _select("real")
    assert real.best_epoch == 4 and real.on_real
    assert real.info() == {"mode": "real", "sources": ["deepcrack-train"], "images": 12, "metric": "dice", "epoch": 4,
                           "dice": 0.7}
    assert real.logged() == {"val_real_dice": pytest.approx(0.7)}
    whole, _ = _select("all")
    assert whole.best_epoch == 3 and not whole.on_real
    assert whole.info() == {"mode": "all", "sources": ["deepcrack-train", "synth"], "images": 72, "metric": "dice",
                            "epoch": 3, "dice": 0.8762}
    assert whole.logged() == {}  # the whole split's score is val_dice already


def test_early_stopping_watches_the_same_score():
    # patience 1: the real Dice drops at epoch 3 (0.5 -> 0.4), the whole split's does not
    real, ran = _select("real", patience=1)
    assert (ran, real.best_epoch) == (3, 2)
    whole, ran = _select("all", patience=1)
    assert (ran, whole.best_epoch) == (4, 3)


def test_too_few_real_validation_images_fall_back_to_the_whole_split():
    sel, _ = _select("real", real_images=6, min_images=10)
    assert sel.best_epoch == 3 and not sel.on_real
    why = "only 6 real-source validation images (min_real_val_images: 10)"
    assert sel.info() == {"mode": "all", "fallback": why, "sources": ["deepcrack-train", "synth"], "images": 66,
                          "metric": "dice", "epoch": 3, "dice": 0.8762}
    # the threshold falls back alike (same rule, same counts)
    by_source, _ = list(_epochs(6))[2]
    _, info = select_threshold(by_source, "real", min_images=10)
    assert info["mode"] == "all" and info["fallback"] == why and info["images"] == 66
    _, info = select_threshold(by_source, "real", min_images=6)
    assert info["mode"] == "real" and info["sources"] == ["deepcrack-train"]
    # the training log says so, a line for each choice
    thr_info = select_threshold(by_source, "real", min_images=10)[1]
    notes = selection_notes({"select_on": sel.info(), "threshold": 0.5, "threshold_from": thr_info})
    assert notes == [f"best epoch 3 chosen on the whole validation split (66 images): {why} "
                     "(Dice at 0.5 0.8762; select_on all)",
                     f"mask threshold 0.5 tuned on the whole validation split (66 images): {why} "
                     f"(Dice {thr_info['dice']}; threshold_from all)"]


def _separated(pos_prob: float, neg_prob: float, pos: int, images: int) -> SourcePixels:
    counts = SourcePixels(images=images)
    counts.update(np.r_[np.full(pos, pos_prob), np.full(4 * pos, neg_prob)], np.r_[np.ones(pos), np.zeros(4 * pos)])
    return counts


def test_tuned_dice_scores_each_epoch_at_the_threshold_it_would_ship_with():
    """Epoch 1: Dice 0.7 at any threshold; epoch 2: cracks at p 0.3 over background at 0.1, nothing
    at 0.5 (Dice 0) but perfect at a tuned threshold. dice picks 1, tuned_dice 2, a fixed 0.5 1."""
    epochs = [{"synth": _pixels(0.9, 10_000, 60), "deepcrack-train": _pixels(0.7, 500, 12)},
              {"synth": _pixels(0.9, 10_000, 60), "deepcrack-train": _separated(0.3, 0.1, 500, 12)}]

    def run(**kw):
        sel = EpochSelector("dice", mode="real", min_images=10, min_delta=1e-4, **kw)
        logged = []
        for epoch, by_source in enumerate(epochs, start=1):
            sel.update(epoch, merge_counts(by_source.values()).metrics(), by_source)
            logged.append(sel.logged())
        return sel, logged

    at_half, logged = run()
    assert at_half.best_epoch == 1 and logged == [{"val_real_dice": pytest.approx(0.7)}, {"val_real_dice": 0.0}]
    tuned, logged = run(tuned=True)
    assert tuned.best_epoch == 2 and logged == [{"val_real_tuned_dice": pytest.approx(0.7)},
                                                {"val_real_tuned_dice": pytest.approx(1.0)}]
    assert tuned.info() == {"mode": "real", "sources": ["deepcrack-train"], "images": 12, "metric": "tuned_dice",
                            "epoch": 2, "dice": 1.0}
    fixed, _ = run(tuned=True, threshold=0.5)
    assert fixed.best_epoch == 1
    # on the whole split (select_on all) tuned_dice scores the pooled split, logged as val_tuned_dice
    whole = EpochSelector("dice", mode="all", tuned=True)
    whole.update(1, merge_counts(epochs[0].values()).metrics(), epochs[0])
    assert list(whole.logged()) == ["val_tuned_dice"] and whole.info()["metric"] == "tuned_dice"
    assert selection_notes({"select_on": tuned.info()}) == [
        "best epoch 2 chosen on the real sources' 12 validation images (deepcrack-train) (tuned Dice 1.0; "
        "select_on real)"]


def test_select_on_follows_threshold_from_unless_set(tmp_path):
    assert TrainConfig().selection_mode() == "real" and TrainConfig().min_real_val_images == 10
    assert TrainConfig(threshold_from="all").selection_mode() == "all"
    assert TrainConfig(threshold_from="all", select_on="real").selection_mode() == "real"
    assert TrainConfig(select_on="all").selection_mode() == "all"
    assert TrainConfig().select_metric == "dice"
    bad = tmp_path / "params.yaml"
    bad.write_text("train_segmenter:\n  select_on: best\n")
    with pytest.raises(Exception) as err:
        load_config("segment", bad)
    assert "train_segmenter.select_on" in str(err.value) and "\n" not in str(err.value)


def test_model_card_rows_say_where_epoch_and_threshold_were_chosen():
    spec = {"arch": "attention_unet", "preprocess": {"size": 256}, "threshold": 0.35,
            "threshold_from": {"mode": "real", "sources": ["deepcrack-train"], "images": 45, "dice": 0.71},
            "select_on": {"mode": "real", "sources": ["deepcrack-train"], "images": 45, "metric": "dice", "epoch": 14,
                          "dice": 0.64}}
    card = modelcard.render(modelcard.CardFacts(name="crack-segmenter", version="3", run_id="r", task="segment",
                                                spec=spec))
    assert ("| crack threshold | 0.350 (best Dice on the pooled pixels of 45 validation images of deepcrack-train: "
            "threshold_from real) |") in card
    assert ("| best epoch | epoch 14: best Dice at 0.5 (0.640) on the pooled pixels of 45 validation images of "
            "deepcrack-train: select_on real |") in card
    why = "only 6 real-source validation images (min_real_val_images: 10)"
    spec["select_on"] = {"mode": "all", "fallback": why, "sources": ["deepcrack-train", "synth"], "images": 66,
                         "epoch": 3, "dice": 0.876}
    card = modelcard.render(modelcard.CardFacts(name="crack-segmenter", version="3", run_id="r", task="segment",
                                                spec=spec))
    assert ("| best epoch | epoch 3: best Dice at 0.5 (0.876) on the pooled pixels of 66 validation images of "
            f"deepcrack-train, synth: select_on all; {why} |") in card
    spec["select_on"].update(metric="tuned_dice")
    card = modelcard.render(modelcard.CardFacts(name="crack-segmenter", version="3", run_id="r", task="segment",
                                                spec=spec))
    assert "| best epoch | epoch 3: best tuned Dice (0.876) on the pooled pixels of 66 validation images" in card
    # a spec from before select_on: no row
    del spec["select_on"]
    assert "| best epoch |" not in modelcard.render(modelcard.CardFacts(name="crack-segmenter", version="3",
                                                                        run_id="r", task="segment", spec=spec))


def test_model_card_says_the_threshold_was_tuned_for_the_hysteresis_masks():
    """A threshold tuned with hysteresis (threshold_from carries its threshold_low) is named so; one
    tuned on plain masks before that, in a spec with hysteresis, is not."""
    tuned = {"mode": "real", "sources": ["deepcrack-train"], "images": 45, "dice": 0.84}
    spec = {"arch": "attention_unet", "preprocess": {"size": 256}, "threshold": 0.795, "threshold_low": 0.25,
            "threshold_from": {**tuned, "threshold_low": 0.25}}

    def row(spec):
        card = modelcard.render(modelcard.CardFacts(name="crack-segmenter", version="3", run_id="r", task="segment",
                                                    spec=spec))
        return next(line for line in card.splitlines() if line.startswith("| crack threshold |"))

    assert row(spec).startswith("| crack threshold | 0.795 (best Dice of the hysteresis masks on the pooled pixels of 45")
    assert "hysteresis: pixels from 0.250 up" in row(spec)
    assert "of the hysteresis masks" not in row({**spec, "threshold_from": tuned})
