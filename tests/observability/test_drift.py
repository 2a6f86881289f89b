"""Drift: input statistics, the reference profile a trained model carries, and the PSI."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fissure.observability import catalog
from fissure.observability.drift import (
    EPSILON,
    FEATURE_EDGES,
    PROFILE_ARTIFACT,
    PROFILE_KEY,
    DriftWindow,
    FeatureProfile,
    Profile,
    classifier_confidence,
    input_stats,
    psi,
    segmenter_confidence,
)


def _surface(rng, size=64, level=None, gain=1.0):
    """A concrete-like grey surface with a dark line: mean level drawn around 0.6."""
    level = rng.uniform(130, 180) if level is None else level
    img = level + rng.normal(0, 12, (size, size, 1)) + rng.normal(0, 4, (size, size, 3))
    img[size // 2 - 1 : size // 2 + 1, :] = 50
    return np.clip(img * gain, 0, 255).astype(np.uint8)


def _stats(images):
    out: dict[str, list[float]] = {}
    for img in images:
        for k, v in input_stats(img, img.shape[:2]).items():
            out.setdefault(k, []).append(v)
    return out


# ------------------------------------------------------------------ input statistics


def test_input_stats_behave_as_their_names_say():
    rng = np.random.default_rng(0)
    img = _surface(rng, 128)
    base = input_stats(img, (3000, 4000))
    assert set(base) == {"brightness", "contrast", "sharpness", "megapixels"}
    assert base["megapixels"] == pytest.approx(12.0)
    assert 0 <= base["brightness"] <= 1 and 0 <= base["contrast"] <= 0.5 and base["sharpness"] > 0

    blurred = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(2)))
    assert input_stats(blurred, (128, 128))["sharpness"] < base["sharpness"] / 2

    brighter = np.clip(img.astype(int) + 40, 0, 255).astype(np.uint8)
    assert input_stats(brighter, (128, 128))["brightness"] > base["brightness"] + 0.1

    flat = np.full((128, 128, 3), 77, np.uint8)
    s = input_stats(flat, (128, 128))
    assert s["contrast"] == pytest.approx(0, abs=1e-6) and s["sharpness"] == pytest.approx(0, abs=1e-6)
    assert s["brightness"] == pytest.approx(77 / 255, abs=1e-3)
    # extremes stay in the documented ranges
    half = np.zeros((128, 128, 3), np.uint8)
    half[:, ::2] = 255
    s = input_stats(half, (128, 128))
    assert s["contrast"] == pytest.approx(0.5, abs=1e-3) and s["brightness"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError):
        input_stats(np.zeros((8, 8), np.uint8), (8, 8))


def test_confidence_is_the_served_definition():
    assert classifier_confidence(np.array([[0.2, 0.8], [0.7, 0.3]])) == pytest.approx([0.8, 0.7])
    maps = np.array([[[0.5, 0.5], [0.5, 0.5]], [[0.0, 1.0], [0.9, 0.1]]])
    assert segmenter_confidence(maps) == pytest.approx([0.5, 0.95])


# ------------------------------------------------------------------ profile and PSI


def test_features_are_binned_like_the_catalogue_histograms():
    assert tuple(FEATURE_EDGES) == catalog.DRIFT_FEATURES
    assert FEATURE_EDGES["brightness"] == catalog.INPUT_BRIGHTNESS.buckets
    assert FEATURE_EDGES["contrast"] == catalog.INPUT_CONTRAST.buckets
    assert FEATURE_EDGES["sharpness"] == catalog.INPUT_SHARPNESS.buckets
    assert FEATURE_EDGES["megapixels"] == catalog.INPUT_MEGAPIXELS.buckets
    assert FEATURE_EDGES["confidence"] == catalog.CONFIDENCE.buckets
    # Prometheus' le: a value on an edge counts in the bin that edge closes; the ends are open
    fp = FeatureProfile.from_values((0.1, 0.5), [0.1, 0.1, 0.3, 0.5, 0.9, -3])
    assert fp.fractions == pytest.approx((3 / 6, 2 / 6, 1 / 6), abs=1e-6)
    with pytest.raises(ValueError):
        FeatureProfile((0.1, 0.5), (0.5, 0.5))  # one fraction short
    with pytest.raises(ValueError):
        FeatureProfile((0.5, 0.1), (0.2, 0.3, 0.5))  # edges must increase


def test_psi_is_small_for_the_same_population_and_large_for_darker_images():
    rng = np.random.default_rng(1)
    profile = Profile.from_samples(_stats(_surface(rng) for _ in range(400)))
    assert profile.items == 400 and set(profile.features) == {"brightness", "contrast", "sharpness", "megapixels"}

    same = _stats(_surface(rng) for _ in range(300))
    darker = _stats(_surface(rng, gain=0.55) for _ in range(300))
    for feature in ("brightness", "contrast", "sharpness"):
        assert psi(profile.features[feature], same[feature]) < 0.1, feature
    assert psi(profile.features["brightness"], darker["brightness"]) > 0.25
    # the same values give exactly 0; the dict form of a feature works too
    ref = same["brightness"]
    again = Profile.from_samples({"brightness": ref}).features["brightness"]
    assert psi(again.to_dict(), ref) == pytest.approx(0, abs=1e-6)


def test_psi_grows_with_the_shift_and_stays_finite_on_empty_bins():
    rng = np.random.default_rng(2)
    ref = FeatureProfile.from_values(FEATURE_EDGES["confidence"], rng.beta(8, 2, 2000))
    values = [psi(ref, np.clip(rng.beta(8, 2, 500) - shift, 0, 1)) for shift in (0.0, 0.1, 0.2, 0.4)]
    assert values == sorted(values) and values[0] < 0.1 and values[-1] > 0.25
    # every value in a bin the reference never saw: large, finite (the epsilon floor)
    worst = psi(ref, [0.01] * 100)
    assert math.isfinite(worst) and worst > 1
    assert worst <= (1 - EPSILON) * math.log(1 / EPSILON) * 2 + 1e-6
    with pytest.raises(ValueError):
        psi(ref, [float("nan")])


def test_profile_round_trips_through_spec_json():
    rng = np.random.default_rng(3)
    samples = {**_stats(_surface(rng) for _ in range(60)), "confidence": list(rng.uniform(0.5, 1, 60)),
               "not_a_feature": [1.0, 2.0]}
    profile = Profile.from_samples(samples)
    assert set(profile.features) == set(catalog.DRIFT_FEATURES) and profile.items == 60
    spec = json.loads(json.dumps({"task": "classify", PROFILE_KEY: profile.to_dict()}))
    assert Profile.from_spec(spec) == profile
    assert spec[PROFILE_KEY]["features"]["brightness"]["edges"] == list(catalog.UNIT_BUCKETS)
    assert all(abs(sum(f["fractions"]) - 1) < 1e-6 for f in spec[PROFILE_KEY]["features"].values())
    assert Profile.from_spec({"task": "classify"}) is None and Profile.from_spec(None) is None
    with pytest.raises(ValueError):
        Profile.from_spec({PROFILE_KEY: {"features": {"brightness": {"edges": [0.1]}}}})
    with pytest.raises(ValueError):
        Profile.from_spec({PROFILE_KEY: []})


# ------------------------------------------------------------------ the window


def _profile(rng):
    return Profile.from_samples({"brightness": rng.uniform(0.4, 0.8, 1000), "confidence": rng.beta(8, 2, 1000)})


def test_window_needs_a_minimum_count_and_stays_bounded():
    rng = np.random.default_rng(4)
    window = DriftWindow(_profile(rng), size=100, min_count=20)
    assert window.psi() == {} and window.count == 0
    for v in rng.uniform(0.4, 0.8, 19):
        window.observe({"brightness": float(v), "sharpness": 0.3, "unknown": 1.0})  # not profiled: ignored
    assert window.psi() == {} and window.count == 19
    window.observe({"brightness": 0.6, "confidence": float("nan")})  # NaN is not a value
    assert set(window.psi()) == {"brightness"} and window.counts() == {"brightness": 20, "confidence": 0}
    for v in rng.beta(8, 2, 30):  # tensor inputs: confidence only
        window.observe({"confidence": float(v)})
    assert set(window.psi()) == {"brightness", "confidence"} and window.count == 30
    for _ in range(500):
        window.observe({"brightness": 0.05})  # old values leave: the window is the last 100 only
    assert window.count == 100 and window.psi()["brightness"] > 0.25
    with pytest.raises(ValueError):
        DriftWindow(window.profile, size=0)


def test_window_is_thread_safe():
    """Writers on several threads while a scraper reads: nothing is lost or raised, and the
    window ends with exactly the last ``size`` values."""
    rng = np.random.default_rng(5)
    window = DriftWindow(_profile(rng), size=500, min_count=50)
    errors, done = [], threading.Event()

    def write(seed):
        r = np.random.default_rng(seed)
        try:
            for v in r.uniform(0.4, 0.8, 5000):
                window.observe({"brightness": float(v), "confidence": float(v)})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def scrape():
        while not done.is_set():
            try:
                for value in window.psi().values():
                    assert math.isfinite(value)
                assert 0 <= window.count <= 500
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    writers = [threading.Thread(target=write, args=(s,)) for s in range(4)]
    reader = threading.Thread(target=scrape)
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    assert not errors
    assert window.counts() == {"brightness": 500, "confidence": 500}
    assert window.psi()["brightness"] < 0.1


# ------------------------------------------------------------------ saved with the model


def _write_sets(root, rng):
    """40 classifier patches (32 px, crack/no_crack) and 16 segmenter images (64 px) with masks."""
    for c in ("crack", "no_crack"):
        (root / "clf" / c).mkdir(parents=True)
    for i in range(40):
        img = _surface(rng, 32)
        if i % 2:
            img[:, 15:17] = 40
        Image.fromarray(img).save(root / "clf" / ("crack" if i % 2 else "no_crack") / f"c{i:03d}.png")
    (root / "seg" / "images").mkdir(parents=True)
    (root / "seg" / "masks").mkdir(parents=True)
    for i in range(16):
        img, mask = _surface(rng, 64), np.zeros((64, 64), np.uint8)
        mask[31:33, :] = 255  # _surface's dark line
        Image.fromarray(img).save(root / "seg" / "images" / f"s{i:03d}.png")
        Image.fromarray(mask).save(root / "seg" / "masks" / f"s{i:03d}.png")
    return root / "clf", root / "seg"


@pytest.mark.slow
def test_a_trained_model_carries_its_reference_profile(tmp_path):
    """Training puts the validation set's profile into the spec (MLflow model, saved model, MAR,
    the runtime) and logs it to MLflow as reference_profile.json."""
    import zipfile

    import mlflow

    from fissure.models import io
    from fissure.serving.package import package, read_mar
    from fissure.serving.runtime import ModelRuntime
    from fissure.training.config import TrainConfig
    from fissure.training.datasets import find_splits
    from fissure.training.run import train

    clf, seg = _write_sets(tmp_path, np.random.default_rng(6))
    configs = {
        "classify": TrainConfig(epochs=1, batch_size=16, size=32, model={"width": 8, "blocks": 1}, threads=1,
                                test_fraction=0.0, val_fraction=0.25),
        "segment": TrainConfig(epochs=1, batch_size=4, size=64, crop=32, eval_batch_size=8, threads=1,
                               model={"base": 4, "depth": 2, "norm": "group"}, test_fraction=0.0, val_fraction=0.25),
    }
    for task, data in (("classify", clf), ("segment", seg)):
        cfg = configs[task]
        val = find_splits(task, data, val_fraction=0.25, test_fraction=0.0, seed=cfg.seed).val
        outcome = train(task, data, cfg, out=tmp_path / task, register=True, progress=False, echo=lambda m: None)
        loaded = io.load_model(outcome.model_uri)
        profile = Profile.from_spec(loaded.spec)
        assert profile is not None and profile.items == len(val) > 0, task
        assert set(profile.features) == set(catalog.DRIFT_FEATURES)
        # the images are 32x32 / 64x64 pixels: every one in the first megapixel bin
        assert profile.features["megapixels"].fractions[0] == 1.0
        # two classes, or max(p, 1-p): no confidence below the 0.5 edge
        assert sum(profile.features["confidence"].fractions[:4]) == 0
        # the profile is the validation images' own statistics
        expected = Profile.from_samples(_stats(np.asarray(Image.open(v.image if task == "segment" else v[0])
                                                          .convert("RGB")) for v in val))
        for feature in ("brightness", "contrast", "sharpness"):
            assert profile.features[feature] == expected.features[feature], (task, feature)
        logged = mlflow.artifacts.load_dict(f"runs:/{outcome.run_id}/{PROFILE_ARTIFACT}")
        assert Profile.from_dict(logged) == profile
        assert mlflow.artifacts.load_dict(f"runs:/{outcome.run_id}/spec.json")[PROFILE_KEY] == logged
        assert Profile.from_spec(io.load_model(str(tmp_path / task / "model")).spec) == profile
        # the MAR carries it to the front (read_mar) and to the worker (ModelRuntime.from_dir)
        record = package(outcome.model_uri, tmp_path / f"serve-{task}")
        assert Profile.from_spec(read_mar(record["mar"])["spec"]) == profile
        with zipfile.ZipFile(record["mar"]) as zf:
            zf.extractall(tmp_path / f"unpacked-{task}")
        assert Profile.from_spec(ModelRuntime.from_dir(tmp_path / f"unpacked-{task}").spec) == profile
