"""Input statistics, the reference profile saved with a model, and the population stability index.

At training time (:mod:`fissure.training.run`) the validation images' statistics and the model's
confidences on them are binned into a :class:`Profile`, saved in the model's ``spec.json`` under
``reference_profile`` (so it travels with the spec: MLflow, the MAR, the front) and logged to MLflow
as ``reference_profile.json``. The serving front keeps the recent values in a :class:`DriftWindow`
and exports :func:`psi` of each feature against the profile (``fissure_drift_psi``).

Bins are the bucket edges of the matching histogram in :mod:`fissure.observability.catalog`
(so the profile and the dashboards' histograms agree) plus the two open ends; a value falls in the
bin whose upper edge is the first edge >= value, as Prometheus' ``le``: edges ``e0 < ... < e(n-1)``
give the n+1 bins ``(-inf, e0], (e0, e1], ..., (e(n-1), +inf)``.

Reading the PSI (the conventional thresholds, as in credit scoring where it comes from):
below 0.1 the population is stable, 0.1 to 0.25 a moderate shift worth a look, above 0.25 a
significant shift (the inputs are no longer what the model was trained on).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from fissure.observability import catalog

PROFILE_KEY = "reference_profile"  # the spec.json key
PROFILE_ARTIFACT = "reference_profile.json"  # the MLflow artifact beside the model
EPSILON = 1e-4  # floor for a bin's share, so an empty bin gives a large but finite PSI
MIN_COUNT = 50  # fewer recent values than this give no PSI: too noisy to read

# The histogram each feature is binned like.
FEATURE_EDGES: dict[str, tuple[float, ...]] = {
    "brightness": catalog.UNIT_BUCKETS,
    "contrast": catalog.CONTRAST_BUCKETS,
    "sharpness": catalog.SHARPNESS_BUCKETS,
    "megapixels": catalog.MEGAPIXEL_BUCKETS,
    "confidence": catalog.CONFIDENCE_BUCKETS,
}

# ITU-R BT.601 luma, as PIL's convert("L").
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0


def input_stats(pixels: np.ndarray, original_hw: tuple[int, int] | list[int]) -> dict[str, float]:
    """Statistics of one input image, from its uint8 [S, S, 3] pixels at model size.

    brightness: mean grey level in [0, 1]; contrast: grey-level standard deviation in [0, 0.5];
    sharpness: mean absolute 4-neighbour Laplacian of the grey levels (0-1 scale) at model size,
    so it does not depend on the upload's resolution; megapixels: of the original image
    (``original_hw`` = its height and width). Numpy only: well under a millisecond at 256x256.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"input_stats wants [H, W, 3] pixels, got {list(pixels.shape)}")
    grey = pixels.reshape(-1, 3).astype(np.float32) @ _LUMA
    grey = grey.reshape(pixels.shape[:2])
    lap = grey[1:-1, 1:-1] * 4.0
    lap -= grey[:-2, 1:-1]
    lap -= grey[2:, 1:-1]
    lap -= grey[1:-1, :-2]
    lap -= grey[1:-1, 2:]
    h, w = original_hw
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "sharpness": float(np.abs(lap).mean()) if lap.size else 0.0,
        "megapixels": float(h) * float(w) / 1e6,
    }


def classifier_confidence(probs) -> list[float]:
    """Served confidence of a classifier: the top-class probability of each row of [N, C]."""
    return [float(x) for x in np.asarray(probs, dtype=np.float64).reshape(len(probs), -1).max(axis=1)]


def segmenter_confidence(probs) -> list[float]:
    """Served confidence of a segmenter: per image, the mean over pixels of max(p, 1 - p)
    for the crack probability map p ([N, ...])."""
    p = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
    return [float(x) for x in np.maximum(p, 1.0 - p).mean(axis=1)]


@dataclass(frozen=True)
class FeatureProfile:
    """One feature's reference distribution: bin edges and the share of items in each bin."""

    edges: tuple[float, ...]
    fractions: tuple[float, ...]  # len(edges) + 1 shares, summing to 1

    def __post_init__(self):
        if len(self.fractions) != len(self.edges) + 1:
            raise ValueError(f"a profile feature needs len(edges)+1 fractions, got {len(self.edges)} "
                             f"edges and {len(self.fractions)} fractions")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("profile edges must increase")
        if any(not math.isfinite(f) or f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-3:
            raise ValueError("profile fractions must be non-negative and sum to 1")

    @classmethod
    def from_values(cls, edges: Iterable[float], values: Iterable[float]) -> "FeatureProfile":
        edges = tuple(float(e) for e in edges)
        counts = _bin_counts(edges, values)
        if counts.sum() == 0:
            raise ValueError("no finite values to profile")
        return cls(edges, tuple(round(float(x), 6) for x in counts / counts.sum()))  # short JSON

    def to_dict(self) -> dict:
        return {"edges": list(self.edges), "fractions": list(self.fractions)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "FeatureProfile":
        return cls(tuple(float(e) for e in data["edges"]), tuple(float(f) for f in data["fractions"]))


@dataclass(frozen=True)
class Profile:
    """The reference distributions of a model's inputs and confidences (its validation set)."""

    features: dict[str, FeatureProfile]
    items: int  # images profiled

    @classmethod
    def from_samples(cls, samples: Mapping[str, Iterable[float]]) -> "Profile":
        """Bin raw values per feature (features of :data:`FEATURE_EDGES`; others and empty ones are skipped)."""
        features: dict[str, FeatureProfile] = {}
        items = 0
        for name, values in samples.items():
            values = [float(v) for v in values]
            if name not in FEATURE_EDGES or not values:
                continue
            try:
                features[name] = FeatureProfile.from_values(FEATURE_EDGES[name], values)
            except ValueError:
                continue  # only non-finite values
            items = max(items, len(values))
        return cls(features, items)

    def to_dict(self) -> dict:
        return {"features": {k: v.to_dict() for k, v in self.features.items()}, "items": self.items}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Profile":
        if not isinstance(data, Mapping) or not isinstance(data.get("features"), Mapping):
            raise ValueError("a reference profile is {'features': {name: {'edges', 'fractions'}}, 'items': N}")
        try:
            features = {str(k): FeatureProfile.from_dict(v) for k, v in data["features"].items()}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed reference profile feature: {exc}") from None
        return cls(features, int(data.get("items", 0)))

    @classmethod
    def from_spec(cls, spec: Mapping | None) -> "Profile | None":
        """The profile saved in a model spec, or None when the model has none (trained before
        profiles existed). A malformed one raises ValueError."""
        data = (spec or {}).get(PROFILE_KEY)
        return None if data is None else cls.from_dict(data)


def _bin_counts(edges: tuple[float, ...], values: Iterable[float]) -> np.ndarray:
    arr = np.fromiter((float(v) for v in values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    # side="left": index of the first edge >= v, i.e. Prometheus' le buckets
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), arr, side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)


def psi(profile_feature: FeatureProfile | Mapping, values: Iterable[float], epsilon: float = EPSILON) -> float:
    """Population stability index of ``values`` against one feature's reference distribution:
    sum over bins of (actual - expected) * ln(actual / expected), shares floored at ``epsilon``.

    0 for the same distribution; < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
    Raises ValueError when ``values`` holds no finite value.
    """
    if not isinstance(profile_feature, FeatureProfile):
        profile_feature = FeatureProfile.from_dict(profile_feature)
    counts = _bin_counts(profile_feature.edges, values)
    total = counts.sum()
    if total == 0:
        raise ValueError("psi of no values")
    actual = np.maximum(counts / total, epsilon)
    expected = np.maximum(np.asarray(profile_feature.fractions, dtype=np.float64), epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class DriftWindow:
    """The last ``size`` values of each profiled feature, and their PSI against the profile.

    Thread-safe: the front observes from its event loop while Prometheus' scrape reads
    :meth:`psi` from another thread. Features the profile lacks are ignored; a feature with
    fewer than ``min_count`` values in the window has no PSI yet.
    """

    def __init__(self, profile: Profile, size: int = 500, min_count: int = MIN_COUNT):
        if size < 1 or min_count < 1:
            raise ValueError("DriftWindow size and min_count must be >= 1")
        self.profile = profile
        self.size = int(size)
        self.min_count = int(min_count)
        self._values = {name: deque(maxlen=self.size) for name in profile.features}
        self._lock = threading.Lock()

    def observe(self, stats: Mapping[str, float]) -> None:
        """Add one image's statistics (any subset of the features, e.g. only confidence for a tensor)."""
        with self._lock:
            for name, value in stats.items():
                window = self._values.get(name)
                if window is not None and value is not None and math.isfinite(value):
                    window.append(float(value))

    def psi(self) -> dict[str, float]:
        """PSI per feature with at least ``min_count`` values in the window."""
        with self._lock:
            snapshot = {k: list(v) for k, v in self._values.items() if len(v) >= self.min_count}
        return {k: psi(self.profile.features[k], v) for k, v in snapshot.items()}

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {k: len(v) for k, v in self._values.items()}

    @property
    def count(self) -> int:
        """Images in the window: the most values any feature holds (confidence-only inputs count too)."""
        with self._lock:
            return max((len(v) for v in self._values.values()), default=0)
