"""`fissure evaluate`'s options and an N-class classifier's report: no fake scores, no tracebacks,
the macro scores, slices and plots of N classes as the docs say them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fissure.cli import main
from fissure.errors import UsageError
from fissure.models import build_model, default_spec
from fissure.models.io import save_model
from fissure.training import plots as P
from fissure.training.datasets import eval_items
from fissure.training.evaluate import evaluate_classifier, evaluate_items, evaluate_segmenter, run_evaluation

from .conftest import write_segment_set
from .test_quality_report import CLF_SPEC, SEG_SPEC, DarkIsCrack

DEFECTS = ["free", "blowhole", "break", "crack", "fray", "uneven"]  # magnetic-tile's, the negative first


def _always(spec: dict, index: int, path: Path) -> str:
    """A saved classifier that answers class ``index`` for every image (weights zero, bias +-5)."""
    module = build_model(spec)
    last = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        last.bias.fill_(-5.0)
        last.bias[index] = 5.0
    return str(save_model(module, spec, path))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    seg = default_spec("segment", base=4, depth=2, size=64)
    clf = dict(width=8, blocks=1, dropout=0.0, size=32)
    return {"segment": str(save_model(build_model(seg), seg, root / "seg")),
            "binary": _always(default_spec("classify", **clf), 1, root / "binary"),
            "defects": _always(default_spec("classify", classes=DEFECTS, **clf), DEFECTS.index("crack"), root / "defects")}


def _folders(root: Path, counts: dict[str, int]) -> Path:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (32, 32), (90 + 20 * i, 100, 100)).save(root / cls / f"{cls}{i}.png")
    return root


def test_a_batch_size_below_one_is_a_usage_error_not_a_perfect_score(models, tmp_path, capsys):
    """--batch-size -1 scored no image and reported Dice 1.0 with rc 0; 0 was silently 8."""
    data = write_segment_set(tmp_path / "seg", 2, size=64)
    clf = _folders(tmp_path / "clf", {"crack": 2, "no_crack": 2})
    out = tmp_path / "r.json"
    for task, model, folder, extra in (("segment", models["segment"], data, []),
                                       ("segment", models["segment"], data, ["--native"]),
                                       ("classify", models["binary"], clf, [])):
        for size in ("-1", "0"):
            rc = main(["evaluate", "--task", task, "--model", model, "--data", str(folder), "--out", str(out),
                       "--batch-size", size, *extra])
            err = capsys.readouterr().err
            assert rc == 2 and "--batch-size" in err and "Traceback" not in err, (task, size, extra, err)
            assert not out.exists()

    # the Python API refuses it too: no caller gets a score of nothing
    items, _ = eval_items("segment", data)
    for size in (0, -1):
        with pytest.raises(UsageError, match="--batch-size must be at least 1"):
            evaluate_items(DarkIsCrack(), SEG_SPEC, items, batch_size=size, overlays=0)
        with pytest.raises(UsageError, match="--batch-size"):
            evaluate_items(DarkIsCrack(), {**SEG_SPEC, "tiling": {"mode": "tile"}}, items, batch_size=size, overlays=0)
        with pytest.raises(UsageError, match="--batch-size"):
            evaluate_segmenter(DarkIsCrack(), SEG_SPEC, items, batch_size=size, overlays=0)
        with pytest.raises(UsageError, match="--batch-size"):
            evaluate_classifier(DarkIsCrack(), CLF_SPEC, eval_items("classify", clf, CLF_SPEC["classes"])[0],
                                batch_size=size)
        with pytest.raises(UsageError, match="--batch-size"):
            run_evaluation(models["segment"], "segment", data, out, batch_size=size, progress=False)
        assert not out.exists()
    # a valid one still scores every image
    assert evaluate_items(DarkIsCrack(), SEG_SPEC, items, batch_size=1, overlays=0).n_images == 2


def test_negative_overlays_or_worst_are_usage_errors(models, tmp_path, capsys):
    """--overlays -2 with --plots was a numpy traceback."""
    data = write_segment_set(tmp_path / "seg", 2, size=64)
    rc = main(["evaluate", "--task", "segment", "--model", models["segment"], "--data", str(data),
               "--out", str(tmp_path / "r.json"), "--plots", str(tmp_path / "p"), "--overlays", "-2"])
    err = capsys.readouterr().err
    assert rc == 2 and "--overlays" in err and "Traceback" not in err
    items, _ = eval_items("segment", data)
    with pytest.raises(UsageError, match="--overlays must be at least 0"):
        evaluate_segmenter(DarkIsCrack(), SEG_SPEC, items, overlays=-2)
    with pytest.raises(UsageError, match="--worst must be at least 0"):
        evaluate_items(DarkIsCrack(), SEG_SPEC, items, overlays=0, worst=-1)


def test_resized_is_refused_for_a_classifier_as_native_is(models, tmp_path, capsys):
    clf = _folders(tmp_path / "clf", {"crack": 1, "no_crack": 1})
    for flag in ("--native", "--resized"):
        rc = main(["evaluate", "--task", "classify", "--model", models["binary"], "--data", str(clf),
                   "--out", str(tmp_path / "r.json"), flag])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith(f"fissure: error: {flag} applies to --task segment"), err
        assert len(err.splitlines()) == 1


def test_an_n_class_report_averages_the_classes_present_and_counts_the_negative_class_false_alarms(
        models, tmp_path, capsys, monkeypatch):
    """A six-class defect model on a folder with only free/ and crack/: macro recall is balanced
    accuracy (both over the two classes present), no slice claims a 0.0 for a class with no image,
    class:free counts its false alarms as the binary class:no_crack does, the summary leads with
    balanced_accuracy, and the plots say what an N-class "PR curve" is and write no threshold sweep."""
    data = _folders(tmp_path / "mt", {"free": 3, "crack": 2})
    out, plots_dir = tmp_path / "r.json", tmp_path / "plots"
    drawn = []
    real_pr_figure = P.pr_figure
    monkeypatch.setattr(P, "pr_figure", lambda *a, **kw: drawn.append((a, kw)) or real_pr_figure(*a, **kw))
    rc = main(["evaluate", "--task", "classify", "--model", models["defects"], "--data", str(data),
               "--out", str(out), "--plots", str(plots_dir)])
    assert rc == 0
    report = json.loads(out.read_text())
    # every image is called crack: free's recall 0, crack's 1
    assert report["balanced_accuracy"] == pytest.approx(0.5)
    assert report["recall"] == pytest.approx(report["balanced_accuracy"])  # was 1/6 over all six classes
    assert report["precision"] == pytest.approx((0.0 + 2 / 5) / 2)
    assert report["f1"] == pytest.approx((0.0 + 2 * 0.4 / 1.4) / 2, abs=1e-6)  # the JSON: 6 digits
    assert list(report["per_class"]) == DEFECTS  # every class listed, the absent ones with support 0
    assert report["per_class"]["fray"]["support"] == 0
    # slices: only the classes with images; the negative class with its false alarms
    assert {k for k in report["slices"] if k.startswith("class:")} == {"class:free", "class:crack"}
    free = report["slices"]["class:free"]
    assert (free["n_images"], free["crack_free_images"], free["false_alarm_images"], free["false_alarm_rate"]) == (3, 3, 3, 1.0)
    assert "false_alarm_rate" not in report["slices"]["class:crack"]
    assert report["slices"]["size:<=512px"]["false_alarm_images"] == 3  # every slice with free images counts them
    (source,) = report["datasets"].values()
    assert source["false_alarm_rate"] == 1.0 and source["recall"] == pytest.approx(0.5)
    assert "model_version" in report and report["model_version"] is None  # a model folder: no registered version
    # no one class to threshold: no sweep, in the JSON or as files
    assert "threshold_sweep" not in report
    assert not list(plots_dir.glob("threshold_sweep.*"))
    assert {"pr_curve.csv", "pr_curve.png", "confusion.csv", "confusion_matrix.png", "slices.csv",
            "quality.json"} <= {p.name for p in plots_dir.iterdir()}
    ((_, title), labels), = [(a[1:], kw) for a, kw in drawn]
    assert "precision-recall" not in title and "top prediction" in title
    assert "confidence" in labels["xlabel"] and labels["ylabel"] != "precision"
    err = capsys.readouterr().err
    summary = next(line for line in err.splitlines() if " on 5 images" in line)
    assert summary.split(": ", 1)[1].startswith("balanced_accuracy 0.5000, accuracy 0.4000"), summary


def test_the_binary_report_keeps_its_headline_and_names_the_classes_present(models, tmp_path, capsys):
    """A crack/no_crack model on crack-free images only: no class:crack slice of 0 images claiming
    recall 0.0; the summary line is the binary one (no balanced_accuracy) and the model a folder's."""
    data = _folders(tmp_path / "clean", {"no_crack": 3})
    (data / "crack").mkdir()
    out = tmp_path / "r.json"
    assert main(["evaluate", "--task", "classify", "--model", models["binary"], "--data", str(data), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {k for k in report["slices"] if k.startswith("class:")} == {"class:no_crack"}
    assert report["slices"]["class:no_crack"]["false_alarm_rate"] == 1.0
    assert report["per_class"]["crack"]["support"] == 0
    assert report["model_version"] is None
    summary = capsys.readouterr().err.splitlines()
    assert any(": accuracy 0.0000, precision" in line for line in summary), summary


def test_help_says_what_n_classes_get(capsys):
    assert main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for says in ("balanced_accuracy", "macro averages over the classes present", "per_class", "confusion",
                 "two-class classify", "N classes: whether the top prediction is right", "data/deepcrack/test"):
        assert says in text, says
    assert "../shared/datasets/deepcrack/test" not in text


def test_n_class_slices_without_a_negative_class_count_no_false_alarms():
    """Classes none of which is a negative name: no false alarms are made up."""
    from fissure.training import slices as S

    assert S.negative_class(["free", "blowhole", "crack"]) == 0
    assert S.negative_class(["blowhole", "good", "crack"]) == 1
    assert S.negative_class(["a", "b", "c"]) is None
    assert S.negative_class(["no_crack", "crack"]) == 0  # binary: the first, as the loaders order them
    y = np.array([0, 0, 1, 2])
    probs = np.eye(3)[[1, 0, 1, 2]]
    slices = S.classify_slices(y, probs, ["a", "b", "c"], [(32, 32)] * 4, [None] * 4)
    assert all("false_alarm_rate" not in m for m in slices.values())
    slices = S.classify_slices(y, probs, ["free", "b", "c"], [(32, 32)] * 4, [None] * 4)
    assert slices["class:free"]["false_alarm_rate"] == 0.5 and slices["size:<=512px"]["crack_free_images"] == 2


def test_a_folder_of_splits_names_the_split_to_evaluate(models, tmp_path, capsys):
    """`fissure data import` writes DST/train and DST/test: evaluating DST says which to name
    instead of calling the splits unknown classes."""
    root = tmp_path / "pn2"
    for split in ("train", "test"):
        _folders(root / split, {"no_crack": 1, "crack": 1})
    rc = main(["evaluate", "--task", "classify", "--model", models["binary"], "--data", str(root),
               "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err == (f"fissure: error: {root}: holds the splits test, train, not one dataset: "
                               f"evaluate one of them, e.g. --data {root / 'test'}"), err
    rc = main(["evaluate", "--task", "classify", "--model", models["binary"], "--data", str(root / "test"),
               "--out", str(tmp_path / "r.json")])
    assert rc == 0
