"""An N-class crack-classifier from class folders: prepare -> train -> per-class metrics in
metrics.json and MLflow -> served with the folder names as labels."""

from __future__ import annotations

import io as _io
import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image, ImageDraw

from fissure.data.prepare import make_params, prepare
from fissure.models import io
from fissure.serving.runtime import ModelRuntime
from fissure.training.run import train

from .conftest import tiny_config

pytestmark = pytest.mark.slow

CLASSES = ("free", "blowhole", "scratch")


def _image(rng, kind: str, size=(48, 40)) -> Image.Image:
    """A grey surface; a blowhole is a dark disc, a scratch a dark line, free neither."""
    h, w = size
    img = Image.fromarray(rng.normal(170, 10, (h, w)).clip(0, 255).astype(np.uint8), "L")
    draw = ImageDraw.Draw(img)
    cy, cx = rng.integers(12, h - 12), rng.integers(12, w - 12)
    if kind == "blowhole":
        r = int(rng.integers(5, 9))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(20, 60)))
    elif kind == "scratch":
        draw.line((int(rng.integers(0, w)), 0, int(rng.integers(0, w)), h), fill=int(rng.integers(20, 60)), width=3)
    return img


@pytest.fixture(scope="module")
def multiclass_prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mc")
    rng = np.random.default_rng(0)
    counts = {"free": 60, "blowhole": 36, "scratch": 30}  # imbalanced, as defect sets are
    for name, n in counts.items():
        (root / "src" / "images" / name).mkdir(parents=True)
        for i in range(n):
            _image(rng, name).save(root / "src" / "images" / name / f"{name}{i:03d}.png")
    params = make_params({"source": [{"path": str(root / "src"), "val_fraction": 0.2, "test_fraction": 0.25}],
                          "feedback": None})
    prepare(params, root / "prepared")
    return root / "prepared" / "classify"


def test_a_classifier_trains_on_the_folder_classes_and_reports_each(multiclass_prepared, tmp_path):
    cfg = tiny_config("classify", epochs=10, lr=5e-3)
    lines = []
    outcome = train("classify", multiclass_prepared, cfg, out=tmp_path / "m", register=True, progress=False,
                    echo=lines.append)
    spec = io.load_model(str(tmp_path / "m" / "model")).spec
    assert spec["classes"] == list(CLASSES)  # the folder names, the negative (free) first
    report = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert report["classes"] == list(CLASSES)
    per_class = report["test_per_class"]
    assert set(per_class) == set(CLASSES)
    assert sum(m["support"] for m in per_class.values()) == report["sizes"]["test"]
    confusion = report["test_confusion"]
    assert sum(sum(row.values()) for row in confusion.values()) == report["sizes"]["test"]
    for name in CLASSES:  # recall is the diagonal over the row, as the matrix says
        row = confusion[name]
        assert per_class[name]["recall"] == pytest.approx(row[name] / sum(row.values()), abs=1e-6)
    assert set(report["val_per_class"]) == set(CLASSES)
    # it learned all three classes, not just the frequent one
    assert report["test"]["balanced_accuracy"] >= 0.6, report["test"]
    assert any(re.match(r"test balanced accuracy \d\.\d{4}; ", line) and "blowhole" in line for line in lines), lines

    run = mlflow.MlflowClient().get_run(outcome.run_id)
    metrics = run.data.metrics
    for name in CLASSES:
        assert metrics[f"test_class.{name}.recall"] == pytest.approx(per_class[name]["recall"])
        assert f"final_val_class.{name}.f1" in metrics
    assert "test_balanced_accuracy" in metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(outcome.run_id)}
    assert {"test_classes.json", "val_classes.json"} <= artifacts
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(outcome.run_id, "plots")}
    assert "plots/test_confusion_matrix.png" in plots

    # served: the label is a folder name, the probabilities name every class
    loaded = io.load_model(str(tmp_path / "m" / "model"))
    runtime = ModelRuntime(loaded.module, loaded.spec)
    buf = _io.BytesIO()
    _image(np.random.default_rng(7), "blowhole").save(buf, format="PNG")
    [result] = runtime.predict([runtime.prepare_image(buf.getvalue())])
    assert result["label"] in CLASSES and set(result["probabilities"]) == set(CLASSES)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_the_review_queue_reads_an_n_class_defect_model_as_defect_or_not():
    """p(crack) for the review queue's uncertainty: the positive class of a binary model; for an
    N-class model with one negative class (magnetic-tile's free) the probability of any defect."""
    from fissure.api.inference import crack_probability

    assert crack_probability({"no_crack": 0.3, "crack": 0.7}) == pytest.approx(0.7)
    spread = {"free": 0.1, "blowhole": 0.3, "break": 0.3, "crack": 0.3}
    assert crack_probability(spread) == pytest.approx(0.9)  # surely a defect, whichever
    assert crack_probability({"free": 0.5, "blowhole": 0.25, "fray": 0.25}) == pytest.approx(0.5)  # most unsure
    assert crack_probability({"a": 0.2, "b": 0.5, "c": 0.3}) == pytest.approx(0.5)  # no negative class: top score


def test_a_folder_in_the_images_class_layout_is_split_per_class(tmp_path):
    """`fissure train --data` on images/<class>/ (masks/<class>/ beside, as the shared magnetic-tile set)."""
    from fissure.training.datasets import find_splits

    rng = np.random.default_rng(1)
    for name, n in {"free": 10, "blowhole": 6, "scratch": 5}.items():
        (tmp_path / "images" / name).mkdir(parents=True)
        (tmp_path / "masks" / name).mkdir(parents=True)
        for i in range(n):
            _image(rng, name).save(tmp_path / "images" / name / f"{name}{i}.png")
    splits = find_splits("classify", tmp_path, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert splits.classes == list(CLASSES)
    assert sorted({lbl for _, lbl in splits.test}) == [0, 1, 2]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 21
