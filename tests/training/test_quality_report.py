"""The quality report of `fissure evaluate`: slices, datasets, threshold sweep, worst predictions.

The models here are small real torch modules with a fixed rule (dark pixels are cracks), so the
numbers each slice must show are known without training.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fissure.data import synth
from fissure.data.loaders import source_tag
from fissure.training import slices as S
from fissure.training.evaluate import evaluate_classifier, evaluate_segmenter
from fissure.training.datasets import eval_items

SEG_SPEC = {"task": "segment", "name": "crack-segmenter", "classes": ["background", "crack"], "threshold": 0.5,
            "preprocess": {"size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
CLF_SPEC = {**SEG_SPEC, "task": "classify", "name": "crack-classifier", "classes": ["no_crack", "crack"]}


class DarkIsCrack(torch.nn.Module):
    """Segmenter: a pixel darker than mid-grey is a crack (logit +-5 on normalised input)."""

    def forward(self, x):
        return -5.0 * x.mean(1, keepdim=True)


class DarkPatchIsCrack(torch.nn.Module):
    """Classifier: the darker the patch's darkest tenth, the surer it holds a crack."""

    def forward(self, x):
        low = x.mean(1).flatten(1).quantile(0.02, dim=1)
        return torch.stack([low * 4.0, -low * 4.0], dim=1)


def _line_mask(size, width, horizontal=True):
    canvas = Image.new("L", (size, size), 0)
    y = size // 2
    ImageDraw.Draw(canvas).line([(4, y), (size - 5, y)] if horizontal else [(y, 4), (y, size - 5)], fill=255, width=width)
    return np.asarray(canvas) > 0


def _write(root: Path, name: str, mask: np.ndarray, dark: np.ndarray | None = None, suffix=".png"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    img = np.full(mask.shape + (3,), 190, np.uint8)
    img[mask if dark is None else dark] = 40
    Image.fromarray(img).save(root / "images" / f"{name}{suffix}")
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")


def test_crack_width_is_the_median_width_along_the_crack():
    for width in (1, 3, 5, 7):
        assert S.crack_width(_line_mask(64, width)) == pytest.approx(width, abs=0.01), width
        assert S.crack_width(_line_mask(64, width, horizontal=False)) == pytest.approx(width, abs=0.01), width
    assert S.crack_width(np.zeros((8, 8), bool)) is None
    assert S.size_bucket(384, 544) == "size:513-1024px" and S.size_bucket(64, 64) == "size:<=512px"
    assert S.size_bucket(3000, 4000) == "size:>2048px"


def test_source_tags_name_a_folder_by_its_last_two_parts_and_number_repeats():
    # prepare and the quality report share fissure.data.loaders.source_tag: files and report agree
    taken = set()
    assert source_tag("../shared/datasets/deepcrack/train", taken) == "deepcrack-train"
    assert source_tag("/data/crack forest/all", taken) == "crack-forest-all"
    assert source_tag("/other/deepcrack/train/", taken) == "deepcrack-train2"
    assert taken == {"deepcrack-train", "crack-forest-all", "deepcrack-train2"}


def test_synthetic_hard_negatives_are_named_only_for_the_very_file(tmp_path):
    k = next(k for k in range(50) if synth.render(synth.image_rng(0, k), 64).negatives)
    sample = synth.render(synth.image_rng(0, k), 64)
    path = tmp_path / f"synth-0-{k:06d}.jpg"
    path.write_bytes(sample.jpeg_bytes())
    assert S.synth_negatives(path, (64, 64)) == sample.negatives
    changed = bytearray(sample.jpeg_bytes())
    changed[-3] ^= 0xFF
    path.write_bytes(bytes(changed))
    assert S.synth_negatives(path, (64, 64)) is None  # not what the generator draws: unknown, not guessed
    other = tmp_path / "datasets-deepcrack-001.jpg"
    other.write_bytes(sample.jpeg_bytes())
    assert S.synth_negatives(other, (64, 64)) is None


@pytest.fixture
def prepared(tmp_path) -> Path:
    """A prepared-data layout: manifest.json with a synthetic and a real source, a test split with
    a thin and a wide crack from the real one, a crack-free image with a dark stain (a false
    alarm for a dark-is-crack model) and synthetic images drawn by the generator."""
    root = tmp_path / "prepared"
    test = root / "segment" / "test"
    manifest = {"sources": [{"source": "synth", "kind": "synth", "images": 3},
                            {"source": "/data/datasets/deepcrack", "kind": "real", "images": 3}]}
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    _write(test, "datasets-deepcrack-thin", _line_mask(64, 1))
    _write(test, "datasets-deepcrack-wide", _line_mask(64, 7))
    stain = np.zeros((64, 64), bool)
    stain[10:20, 10:20] = True
    _write(test, "datasets-deepcrack-stain", np.zeros((64, 64), bool), dark=stain)
    for k in range(3):
        sample = synth.render(synth.image_rng(0, k), 64)
        (test / "images" / f"synth-0-{k:06d}.jpg").write_bytes(sample.jpeg_bytes())
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(test / "masks" / f"synth-0-{k:06d}.png")
    return root


def test_segmenter_report_by_slice_and_source(prepared, tmp_path):
    items, _ = eval_items("segment", prepared / "segment" / "test")
    result = evaluate_segmenter(DarkIsCrack(), SEG_SPEC, items, overlays=0, worst=3)
    q = result.quality()
    assert q["datasets_by"] == "source" and set(q["datasets"]) == {"synth", "datasets-deepcrack"}
    assert sum(m["n_images"] for m in q["datasets"].values()) == len(items) == 6

    # a source's entry is what evaluating that source alone gives
    real = [it for it in items if it.image.name.startswith("datasets-")]
    alone = evaluate_segmenter(DarkIsCrack(), SEG_SPEC, real, overlays=0).metrics
    for key in ("dice", "precision", "recall", "relaxed_f1"):
        assert q["datasets"]["datasets-deepcrack"][key] == pytest.approx(alone[key], abs=1e-6), key

    by_name = {s.name: s for s in result.scores}
    assert "width:thin" in by_name["datasets-deepcrack-thin.png"].slices
    assert "width:wide" in by_name["datasets-deepcrack-wide.png"].slices
    assert by_name["datasets-deepcrack-stain.png"].slices[0] == "no_crack"
    drawn = {s.name: synth.render(synth.image_rng(0, k), 64).negatives for k, s in
             enumerate(sorted((s for s in result.scores if s.source == "synth"), key=lambda s: s.name))}
    for name, kinds in drawn.items():
        assert ("hard_negative" in by_name[name].slices) == bool(kinds), name
        assert {f"hard_negative:{k}" for k in kinds} <= set(by_name[name].slices)
    # the stain is the one crack-free real image: every one of them has a false alarm
    no_crack = q["slices"]["no_crack"]
    assert no_crack["false_alarm_images"] >= 1 and no_crack["crack_free_images"] >= 1
    # each slice counts its images; the width slices split the images with cracks
    assert q["slices"]["width:thin"]["n_images"] + q["slices"]["width:wide"]["n_images"] == q["slices"]["crack"]["n_images"]
    assert q["slices"]["crack"]["n_images"] + no_crack["n_images"] == 6
    for m in q["slices"].values():  # tolerant scores never lower than strict ones
        assert m["relaxed_f1"] >= m["f1"] - 1e-6 or not m["truth_px"]

    # the worst: lowest Dice first, the false alarm on a crack-free image (Dice 0) among them
    assert len(q["worst"]) == 3
    dices = [w["dice"] for w in q["worst"]]
    assert dices == sorted(dices) and dices[0] == min(s.dice for s in result.scores)
    assert "datasets-deepcrack-stain.png" in [w["image"] for w in q["worst"]]
    assert q["weakest_slice"]["slice"] in q["slices"]


def test_plots_hold_the_sweep_slices_and_the_gallery(prepared, tmp_path):
    items, _ = eval_items("segment", prepared / "segment" / "test")
    result = evaluate_segmenter(DarkIsCrack(), SEG_SPEC, items, overlays=1, worst=2)
    out = tmp_path / "plots"
    result.write_plots(out)
    with (out / "threshold_sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"threshold", "precision", "recall", "f1", "dice"}
    at = next(r for r in rows if float(r["threshold"]) == pytest.approx(0.5))
    assert float(at["dice"]) == pytest.approx(result.metrics["dice"], abs=1e-4)  # the model's threshold
    with (out / "slices.csv").open() as fh:
        names = [r["slice"] for r in csv.DictReader(fh)]
    assert {"crack", "no_crack", "source:synth", "source:datasets-deepcrack"} <= set(names)
    with (out / "per_image.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 6
    gallery = sorted(p.name for p in (out / "worst").iterdir())
    assert len(gallery) == 2 and gallery[0].startswith("01-")
    for name in ("worst.png", "threshold_sweep.png", "slices.png", "overlays.png"):
        assert Image.open(out / name).size[0] > 100, name
    quality = json.loads((out / "quality.json").read_text())
    assert quality["metrics"]["dice"] == pytest.approx(result.metrics["dice"], abs=1e-6)
    assert quality["worst"][0]["image"] == result.worst[0][0].name
    # the shape and names of fissure evaluate's JSON: per source of the one folder, as datasets
    assert quality["datasets_by"] == "source" and quality["datasets"] == result.quality()["datasets"]
    assert "sources" not in quality

    # a second run with fewer worst images leaves no stale gallery image behind
    evaluate_segmenter(DarkIsCrack(), SEG_SPEC, items, overlays=0, worst=1).write_plots(out)
    assert len(list((out / "worst").iterdir())) == 1


def test_large_images_are_kept_small_in_the_gallery(tmp_path):
    mask = _line_mask(1500, 2)
    rgb, truth, pred = S.thumbnail(np.zeros((1500, 1500, 3), np.uint8), mask, mask)
    assert rgb.shape == (512, 512, 3) and truth.shape == pred.shape == (512, 512)
    assert truth.any()  # a 2-px crack at a third of the size still shows


def test_classifier_report_names_its_most_confident_mistakes(tmp_path):
    root = tmp_path / "clf"
    rng = np.random.default_rng(0)
    for cls in ("crack", "no_crack"):
        (root / cls).mkdir(parents=True)
    # no_crack patches, one with a dark stain (a confident false alarm); crack patches, one too faint to see
    for i, (cls, darkest) in enumerate([("no_crack", 180), ("no_crack", 170), ("no_crack", 20), ("crack", 30),
                                        ("crack", 40), ("crack", 175)]):
        img = np.full((32, 32, 3), 190, np.uint8) + rng.integers(0, 3, (32, 32, 3)).astype(np.uint8)
        img[14:18, 2:30] = darkest
        Image.fromarray(img).save(root / cls / f"synth-0-{i:06d}_y0_x0.png")
    items, classes = eval_items("classify", root, CLF_SPEC["classes"])
    result = evaluate_classifier(DarkPatchIsCrack(), CLF_SPEC, items, worst=5)
    q = result.quality()
    wrong = [(w["image"], w["true"], w["predicted"]) for w in q["worst"]]
    assert set(wrong) == {("synth-0-000002_y0_x0.png", "no_crack", "crack"),
                          ("synth-0-000005_y0_x0.png", "crack", "no_crack")}
    assert [w["confidence"] for w in q["worst"]] == sorted((w["confidence"] for w in q["worst"]), reverse=True)
    assert q["datasets_by"] == "source" and q["datasets"]["synth"]["n_images"] == 6
    assert set(q["slices"]) == {"class:no_crack", "class:crack", "size:<=512px"}  # no drawn image behind them
    assert q["threshold_sweep"]["threshold"] == 0.5
    out = tmp_path / "plots"
    result.write_plots(out)
    assert len(list((out / "worst").iterdir())) == 2 and (out / "worst.png").is_file()
    with (out / "threshold_sweep.csv").open() as fh:
        assert {"threshold", "precision", "recall", "f1"} <= set(next(csv.DictReader(fh)))


class AlwaysCrack(torch.nn.Module):
    def forward(self, x):
        return torch.tensor([[-5.0, 5.0]]).expand(len(x), 2)


def _prepared_patches(root: Path, ks) -> dict[str, list[str]]:
    """A prepared layout as `fissure data prepare` writes it: synthetic images in segment/test and
    no_crack patches cut from them in classify/test; returns each patch's drawn hard negatives."""
    images, drawn = root / "segment" / "test" / "images", {}
    patches = root / "classify" / "test" / "no_crack"
    images.mkdir(parents=True)
    patches.mkdir(parents=True)
    (root / "classify" / "test" / "crack").mkdir()
    for k in ks:
        sample = synth.render(synth.image_rng(0, k), 64)
        (images / f"synth-0-{k:06d}.jpg").write_bytes(sample.jpeg_bytes())
        for y, x in ((0, 0), (32, 32)):
            name = f"synth-0-{k:06d}_y{y}_x{x}.jpg"
            Image.fromarray(sample.image[y : y + 32, x : x + 32]).save(patches / name)
            drawn[name] = sample.negatives
    return drawn


def test_classifier_hard_negative_slices_count_the_false_alarms_on_drawn_joints_and_bands(tmp_path):
    ks = [k for k in range(40) if synth.render(synth.image_rng(0, k), 64).negatives][:3] + \
         [next(k for k in range(40) if not synth.render(synth.image_rng(0, k), 64).negatives)]
    drawn = _prepared_patches(tmp_path / "prepared", ks)
    root = tmp_path / "prepared" / "classify" / "test"
    Image.new("RGB", (32, 32), (40, 40, 40)).save(root / "crack" / "datasets-x-000001_y0_x0.jpg")
    # a patch whose image is not what the generator draws: not tagged, however it is named
    first = f"synth-0-{ks[0]:06d}"
    (tmp_path / "prepared" / "segment" / "test" / "images" / f"{first}.jpg").write_bytes(b"not that image")
    items, _ = eval_items("classify", root, CLF_SPEC["classes"])

    q = evaluate_classifier(AlwaysCrack(), CLF_SPEC, items).quality()
    tagged = {n: kinds for n, kinds in drawn.items() if kinds and not n.startswith(first)}
    assert tagged and q["slices"]["hard_negative"]["n_images"] == len(tagged)
    hard = q["slices"]["hard_negative"]
    assert hard["false_alarm_images"] == hard["crack_free_images"] == len(tagged) and hard["false_alarm_rate"] == 1.0
    assert "recall" not in hard  # no crack in the slice: no crack recall to report
    for kind in {k for kinds in tagged.values() for k in kinds}:
        assert q["slices"][f"hard_negative:{kind}"]["n_images"] == sum(kind in v for v in tagged.values()), kind
    assert q["slices"]["size:<=512px"]["n_images"] == len(items)
    assert q["slices"]["class:crack"]["recall"] == 1.0
    # every crack-free item is a false alarm: the narrowest such slice is the weakest
    assert q["weakest_slice"]["slice"].startswith("hard_negative") and q["weakest_slice"]["metric"] == "false_alarm_rate"

    # a model that sees the drawings: its false alarms on them are the ones counted
    result = evaluate_classifier(DarkPatchIsCrack(), CLF_SPEC, items)
    called = {Path(p).name for p, y, pr in zip(result.paths, result.y_true, result.probs) if y == 0 and pr.argmax() == 1}
    assert result.quality()["slices"]["hard_negative"]["false_alarm_images"] == len(called & set(tagged))


def test_whole_synthetic_classification_images_are_tagged_with_their_drawings(tmp_path):
    synth.write_dataset(tmp_path / "clf", "classify", count=8, size=48)
    items, _ = eval_items("classify", tmp_path / "clf", CLF_SPEC["classes"])
    q = evaluate_classifier(AlwaysCrack(), CLF_SPEC, items).quality()
    want = [k for k in range(1, 8, 2) if synth.render_for_task(0, k, "classify", 48)[0].negatives]
    assert want and q["slices"]["hard_negative"]["n_images"] == len(want)
    (source,) = q["datasets"].values()
    assert source["false_alarm_rate"] == 1.0 and source["recall"] == 1.0 and source["n_images"] == 8


def test_dvc_plots_show_renders_every_declared_plot(prepared, tmp_path):
    """dvc.yaml's plots read the files evaluate writes (names and columns) without an error."""
    import shutil
    import subprocess
    import sys

    import yaml

    from ..conftest import REPO_ROOT

    dvc = Path(sys.executable).parent / "dvc"
    if not dvc.exists():
        pytest.skip("dvc is not installed in this environment")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy2(REPO_ROOT / "params.yaml", repo / "params.yaml")
    items, _ = eval_items("segment", prepared / "segment" / "test")
    evaluate_segmenter(DarkIsCrack(), SEG_SPEC, items, overlays=1, worst=2).write_plots(repo / "reports/plots/segmenter")
    clf = tmp_path / "clf"
    for i, cls in enumerate(["crack", "no_crack"] * 3):
        (clf / cls).mkdir(parents=True, exist_ok=True)
        img = np.full((32, 32, 3), 190, np.uint8)
        img[14:18] = 30 if (cls == "crack") != (i == 4) else 185
        Image.fromarray(img).save(clf / cls / f"p{i}.png")
    clf_items, _ = eval_items("classify", clf, CLF_SPEC["classes"])
    evaluate_classifier(DarkPatchIsCrack(), CLF_SPEC, clf_items).write_plots(repo / "reports/plots/classifier")
    for model in ("crack-classifier", "crack-segmenter"):
        (repo / "models" / model).mkdir(parents=True)
        (repo / "models" / model / "history.csv").write_text("epoch,train_loss,val_loss\n1,0.9,0.8\n2,0.7,0.6\n")
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=repo, check=True, capture_output=True)
    proc = subprocess.run([str(dvc), "plots", "show", "--json"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = json.loads(proc.stdout)
    assert not shown.get("errors"), shown.get("errors")
    declared = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]
    ids = [p if isinstance(p, str) else next(iter(p)) for p in declared]
    for plot_id in ids:
        rendered = shown["data"].get(plot_id)
        assert rendered, plot_id
        if rendered[0]["type"] == "vega":
            assert rendered[0]["content"]["data"]["values"], plot_id
    fields = {row.get("filename::field") for row in shown["data"]["threshold_sweep"][0]["content"]["data"]["values"]}
    assert {"segmenter/threshold_sweep.csv::dice", "classifier/threshold_sweep.csv::f1"} <= fields
    # both models' slices: the classifier's recall and, on crack-free items, its false alarms
    for plot_id, field in (("slices", "dice"), ("classifier_slices", "recall"), ("classifier_false_alarms", "false_alarm_rate")):
        rows = shown["data"][plot_id][0]["content"]["data"]["values"]
        assert any(r.get(field) not in (None, "") for r in rows), (plot_id, rows[:2])
        assert any(r.get("slice", "").startswith("source:") for r in rows), plot_id
