"""A segmenter's crack probabilities -> its crack mask, as the model's spec says (one place for
serving, `fissure evaluate` and training's reports).

``threshold`` alone: a pixel is crack when its probability reaches it. With ``threshold_low``
(hysteresis, as Canny's edge detector links edges): a pixel at or above ``threshold_low`` is
crack too when it is connected (8 neighbours) through such pixels to one at or above
``threshold``. A crack's faint stretch then joins its confident one, while faint texture that
touches no confident pixel stays background; the threshold alone would have to be lowered
everywhere to find the faint stretch (docs/training.md, "Hysteresis").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)


def mask_params(spec: dict) -> tuple[float, float | None]:
    """(threshold, threshold_low or None) from a model's spec (threshold 0.5 when absent)."""
    high = float(spec.get("threshold", 0.5))
    low = spec.get("threshold_low")
    return high, (None if low is None or float(low) >= high else float(low))


def crack_mask(prob: np.ndarray, threshold: float, threshold_low: float | None = None) -> np.ndarray:
    """Boolean crack mask of a probability map [H, W] (module docstring)."""
    strong = prob >= threshold
    if threshold_low is None or threshold_low >= threshold or not strong.any():
        return strong
    labels, n = ndimage.label(prob >= threshold_low, structure=EIGHT)
    keep = np.zeros(n + 1, dtype=bool)
    keep[labels[strong]] = True
    keep[0] = False
    return keep[labels]
