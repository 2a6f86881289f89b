"""Hysteresis masks (fissure.models.masks): a crack's faint stretch joins its confident one, faint
texture alone stays background; serving and `fissure evaluate` both draw masks that way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fissure.models import default_spec
from fissure.models.masks import crack_mask, mask_params

DARK, FAINT, SURFACE = 40, 150, 220  # grey levels: a confident crack, a faint one, the surface


def _map() -> np.ndarray:
    prob = np.full((20, 30), 0.05)
    prob[10, 2:12] = 0.9  # confident part of a crack
    prob[10, 12:20] = 0.3  # its faint continuation
    prob[11, 20] = 0.3  # ...still connected, diagonally
    prob[3, 22:27] = 0.3  # faint texture touching nothing confident
    return prob


def test_the_threshold_alone_when_there_is_no_low_one():
    prob = _map()
    assert (crack_mask(prob, 0.5) == (prob >= 0.5)).all()
    assert (crack_mask(prob, 0.5, 0.6) == (prob >= 0.5)).all()  # a low one above the threshold is off


def test_a_faint_stretch_joins_its_confident_crack_and_faint_texture_alone_does_not():
    prob = _map()
    mask = crack_mask(prob, 0.5, 0.2)
    assert mask[10, 2:20].all() and mask[11, 20]
    assert not mask[3].any()
    assert mask.sum() == 10 + 8 + 1
    assert not crack_mask(np.full((5, 5), 0.3), 0.5, 0.2).any()  # nothing confident: nothing at all


@pytest.mark.parametrize("spec, expected", [
    ({}, (0.5, None)),
    ({"threshold": 0.4}, (0.4, None)),
    ({"threshold": 0.4, "threshold_low": 0.25}, (0.4, 0.25)),
    ({"threshold": 0.4, "threshold_low": 0.4}, (0.4, None)),
    ({"threshold": 0.4, "threshold_low": None}, (0.4, None)),
])
def test_mask_params_read_the_spec(spec, expected):
    assert mask_params(spec) == expected


class DarkIsCrack(nn.Module):
    """Per-pixel logits from the (normalised) red channel: the darker, the likelier a crack."""

    def forward(self, x):
        return -3.0 * x[:, :1] - 1.0


def _photo(size: int = 64) -> np.ndarray:
    grey = np.full((size, size), SURFACE, np.uint8)
    grey[30:33, 4:30] = DARK
    grey[30:33, 30:60] = FAINT  # continues the dark crack
    grey[8:11, 40:58] = FAINT  # a faint mark on its own
    return np.repeat(grey[..., None], 3, axis=2)


def _spec(low):
    spec = default_spec("segment", base=8, depth=2, size=64)
    from fissure.models import preprocess_config
    from fissure.preprocess import normalize

    probs = torch.sigmoid(DarkIsCrack()(normalize(torch.tensor([[[[v] * 3]] for v in (DARK, FAINT, SURFACE)],
                                                                dtype=torch.uint8), preprocess_config(spec))))
    p_dark, p_faint, p_surface = (float(p) for p in probs.flatten())
    assert p_surface < p_faint < p_dark  # what the test relies on
    spec["threshold"] = (p_faint + p_dark) / 2
    if low:
        spec["threshold_low"] = (p_surface + p_faint) / 2
    return spec


@pytest.mark.parametrize("low", [False, True])
def test_served_masks_follow_the_spec(low):
    import io

    from fissure.serving import codec
    from fissure.serving.runtime import ModelRuntime, PixelBudget

    rt = ModelRuntime(DarkIsCrack(), _spec(low))
    buf = io.BytesIO()
    Image.fromarray(_photo()).save(buf, "PNG")
    mask = codec.rle_decode(rt.predict([rt.prepare_image(buf.getvalue(), PixelBudget())])[0]["mask_rle"])
    assert mask[31, 10] and not mask[9, 50]  # the dark crack always; the lone faint mark never
    assert bool(mask[31, 45]) is low  # the faint continuation only with the low threshold


@pytest.mark.parametrize("low", [False, True])
def test_evaluate_scores_the_masks_the_spec_draws(tmp_path, low):
    from fissure.training.datasets import eval_items
    from fissure.training.evaluate import evaluate_items

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(_photo()).save(tmp_path / "images" / "a.png")
    truth = np.zeros((64, 64), np.uint8)
    truth[30:33, 4:60] = 255
    Image.fromarray(truth).save(tmp_path / "masks" / "a.png")
    result = evaluate_items(DarkIsCrack(), _spec(low), eval_items("segment", tmp_path)[0], overlays=0)
    assert result.metrics["precision"] == pytest.approx(1.0)
    assert result.metrics["recall"] == pytest.approx(1.0 if low else 26 / 56, abs=0.02)
    sweep = result.quality()["threshold_sweep"]
    assert ("threshold_low" in sweep) is low


def _maps(n=4, shape=(48, 64), seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    for _ in range(n):  # smooth fields: regions of every size, some touching a confident pixel
        prob = ndimage.gaussian_filter(rng.random(shape), 2)
        yield (prob - prob.min()) / (prob.max() - prob.min()), ndimage.gaussian_filter(rng.random(shape), 2) > 0.5


def test_the_threshold_sweep_counts_the_masks_served_at_every_threshold():
    """PixelCounts with ``low``: precision and recall at each threshold are those of crack_mask
    there (one labelling per image for all thresholds), and differ from the plain sweep."""
    from fissure.training.metrics import PixelCounts

    maps = list(_maps())
    hyst, plain = PixelCounts(low=0.25), PixelCounts()
    hyst.update(np.stack([p for p, _ in maps])[:, None], np.stack([t for _, t in maps])[:, None])  # a batch [B, 1, H, W]
    for prob, truth in maps:
        plain.update(prob, truth)
    precision, recall, thresholds = hyst.pr_curve()
    total = sum(int(t.sum()) for _, t in maps)
    for i in range(0, len(thresholds), 5):
        masks = [(crack_mask(p, thresholds[i], 0.25), t) for p, t in maps]
        tp, marked = sum(int((m & t).sum()) for m, t in masks), sum(int(m.sum()) for m, _ in masks)
        assert recall[i] == pytest.approx(tp / total) and precision[i] == pytest.approx(tp / marked if marked else 1.0)
    p_plain, r_plain, _ = plain.pr_curve()
    below, above = thresholds <= 0.25, thresholds > 0.25
    assert np.allclose(precision[below], p_plain[below]) and np.allclose(recall[below], r_plain[below])
    assert (recall[above] >= r_plain[above]).all() and (recall[above] > r_plain[above]).any()
    with pytest.raises(ValueError, match="different bins, threshold or low"):
        plain.merge(hyst)


def test_the_tuned_threshold_is_the_best_for_the_hysteresis_masks():
    """Validation counts with the model's low threshold tune the threshold its masks need: without
    hysteresis the best threshold sits below the faint stretch (taking the lone faint mark too);
    with it, above (the stretch comes with its confident crack, the lone mark stays out)."""
    from fissure.models import preprocess_config
    from fissure.preprocess import normalize
    from fissure.training.loop import select_threshold, validate

    spec = _spec(low=True)
    x = normalize(torch.from_numpy(_photo())[None], preprocess_config(spec))
    truth = torch.zeros(1, 1, 64, 64)
    truth[..., 30:33, 4:60] = 1
    p_faint = float(torch.sigmoid(DarkIsCrack()(x))[0, 0, 31, 45])
    tuned = {}
    for low in (None, spec["threshold_low"]):
        _, _, by_source = validate("segment", DarkIsCrack(), [(x, truth)], torch.device("cpu"),
                                   lambda logits, y: torch.zeros(()), groups=["site"], low=low)
        tuned[low], info = select_threshold(by_source, "real", 0.01, 0.99)
        assert info["sources"] == ["site"] and info.get("threshold_low") == low  # the spec says which masks
    assert tuned[None] <= p_faint < tuned[spec["threshold_low"]]
    assert info["dice"] == pytest.approx(1.0)
