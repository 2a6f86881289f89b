"""fissure data prepare: deterministic, disjoint splits for both models; feedback; params."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from fissure.cli import main
from fissure.data.prepare import load_params, make_params, prepare
from fissure.data.synth import write_dataset
from fissure.errors import DataError

SMALL = dict(count=24, size=128, seed=4, patch_size=48, patch_stride=40, feedback=None)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep")
    prepare(make_params(SMALL), out)
    return out


def test_layout_and_manifest(prepared):
    m = json.loads((prepared / "manifest.json").read_text())
    seg = m["counts"]["segment"]
    assert sum(seg.values()) == 24 and seg["val"] >= 1 and seg["test"] >= 1 and seg["train"] > seg["val"]
    for split in ("train", "val", "test"):
        images = list((prepared / "segment" / split / "images").glob("*.jpg"))
        masks = list((prepared / "segment" / split / "masks").glob("*.png"))
        assert len(images) == len(masks) == seg[split]
        c = m["counts"]["classify"][split]
        assert c["crack"] == c["no_crack"]  # balanced per split
        for label in ("crack", "no_crack"):
            assert len(list((prepared / "classify" / split / label).glob("*.jpg"))) == c[label]
    assert m["counts"]["classify"]["train"]["crack"] > 0
    assert m["seed"] == 4 and m["sources"][0]["source"] == "synth" and len(m["content_hash"]) == 64


def test_splits_are_disjoint_and_patches_stay_in_their_split(prepared):
    stems = {}
    for split in ("train", "val", "test"):
        for p in (prepared / "segment" / split / "images").glob("*.jpg"):
            assert p.stem not in stems
            stems[p.stem] = split
    for split in ("train", "val", "test"):
        for p in (prepared / "classify" / split).rglob("*.jpg"):
            source = p.stem.rsplit("_y", 1)[0]
            assert stems[source] == split


def test_prepare_is_deterministic(prepared, tmp_path):
    prepare(make_params(SMALL), tmp_path)
    assert _files(tmp_path) == _files(prepared)


def test_prepare_rewrites_stale_output(prepared, tmp_path):
    stale = tmp_path / "segment" / "train" / "images" / "stale.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("not ours")
    prepare(make_params(SMALL), tmp_path)
    assert not stale.exists() and (tmp_path / "keep.txt").exists()


def test_real_folder_source_and_feedback(tmp_path):
    real = tmp_path / "real"
    write_dataset(real, "segment", 10, seed=9, size=160)
    big = Image.open(next((real / "images").glob("*.jpg"))).resize((700, 700))
    big.save(real / "images" / "big.jpg")
    Image.open(next((real / "masks").glob("*.png"))).resize((700, 700), Image.NEAREST).save(real / "masks" / "big.png")
    fb = tmp_path / "feedback"
    write_dataset(fb, "segment", 3, seed=10, size=128)
    logs = []
    params = make_params(dict(SMALL, count=12, source=["synth", str(real)], feedback=str(fb), max_side=512))
    m = prepare(params, tmp_path / "out", log=logs.append)
    assert [s["images"] for s in m["sources"]] == [12, 11]
    assert m["feedback"]["items"] == 3 and m["feedback"]["layout"] == "segment"
    train = tmp_path / "out" / "segment" / "train"
    assert len(list((train / "images").glob("feedback-*.jpg"))) == 3
    assert any("feedback" in line for line in logs)
    resized = [p for p in (tmp_path / "out" / "segment").rglob("*big.jpg")]
    assert len(resized) == 1 and max(Image.open(resized[0]).size) == 512
    mask = Image.open(str(resized[0]).replace("images", "masks").replace(".jpg", ".png"))
    assert mask.size == Image.open(resized[0]).size


def test_classification_feedback_goes_to_train(tmp_path):
    fb = tmp_path / "fb"
    write_dataset(fb, "classify", 4, seed=1, size=64)
    m = prepare(make_params(dict(SMALL, count=10, feedback=str(fb))), tmp_path / "out")
    assert m["feedback"]["layout"] == "classify"
    assert len(list((tmp_path / "out" / "classify" / "train" / "crack").glob("feedback-*.jpg"))) == 2
    assert len(list((tmp_path / "out" / "classify" / "train" / "no_crack").glob("feedback-*.jpg"))) == 2


def test_feedback_export_layout_both_tasks_and_gitkeep(tmp_path):
    """`fissure feedback export`'s folder: images/ + masks/ and images/<class>/ together, a .gitkeep."""
    fb = tmp_path / "fb"
    write_dataset(fb, "segment", 3, seed=10, size=64)
    write_dataset(fb / "images", "classify", 4, seed=1, size=64)
    (fb / ".gitkeep").write_text("")
    m = prepare(make_params(dict(SMALL, count=10, feedback=str(fb))), tmp_path / "out")
    assert m["feedback"] == {"source": str(fb), "layout": "segment+classify", "items": 7}
    out = tmp_path / "out"
    assert len(list((out / "segment" / "train" / "images").glob("feedback-*.jpg"))) == 3
    for name in ("crack", "no_crack"):
        assert len(list((out / "classify" / "train" / name).glob("feedback-synth-1-*.jpg"))) == 2


def test_feedback_folder_with_only_a_gitkeep_is_empty(tmp_path):
    fb = tmp_path / "fb"
    fb.mkdir()
    (fb / ".gitkeep").write_text("")
    logs = []
    m = prepare(make_params(dict(SMALL, count=8, feedback=str(fb))), tmp_path / "out", log=logs.append)
    assert m["feedback"] is None and any("holds no items, skipped" in line for line in logs)


def test_an_export_of_no_judged_items_is_no_feedback(tmp_path):
    """`fissure feedback export` on a store with nothing judged writes its manifest alone: the
    default retrain command (export, then `dvc repro`) must still run."""
    import json as _json

    fb = tmp_path / "fb"
    fb.mkdir()
    (fb / "manifest.json").write_text(_json.dumps({"format": "fissure-feedback-export/1", "items": []}))
    logs = []
    m = prepare(make_params(dict(SMALL, count=8, feedback=str(fb))), tmp_path / "out", log=logs.append)
    assert m["feedback"] is None and any("holds no items, skipped" in line for line in logs)


def test_missing_feedback_is_logged_and_skipped(tmp_path):
    logs = []
    m = prepare(make_params(dict(SMALL, count=8, feedback=str(tmp_path / "none"))), tmp_path / "out",
                log=logs.append)
    assert m["feedback"] is None and any("not found, skipped" in line for line in logs)


def test_cli_reads_params_and_options_override(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochs: 1\nprepare:\n  count: 50\n  size: 96\n  seed: 2\n"
                      "  patch_size: 48\n  patch_stride: 48\n  feedback: null\n")
    assert load_params(params)["count"] == 50
    rc = main(["data", "prepare", "--params", str(params), "--out", str(tmp_path / "out"), "--count", "9"])
    assert rc == 0
    # stderr is no terminal here (a log, as under dvc repro): each stage prints plain progress lines
    err = capsys.readouterr().err
    assert re.search(r"^prepare synth: images 9/9 elapsed", err, re.M)
    assert re.search(r"^label tiles: images \d+/\d+ elapsed", err, re.M)
    assert re.search(r"^write patches: images \d+/\d+ elapsed", err, re.M)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["params"]["count"] == 9 and m["params"]["size"] == 96 and m["seed"] == 2
    assert sum(m["counts"]["segment"].values()) == 9


def test_defaults_fit_the_training_budget():
    p = make_params({})
    assert p.source == ["synth"] and 200 <= p.count <= 600 and p.size == 256


def test_zero_fraction_leaves_no_empty_split_folder(tmp_path):
    m = prepare(make_params(dict(SMALL, count=10, val_fraction=0.0, test_fraction=0.2)), tmp_path)
    assert m["counts"]["segment"]["val"] == 0 and m["counts"]["classify"]["val"] == {"crack": 0, "no_crack": 0}
    assert not (tmp_path / "segment" / "val").exists() and not (tmp_path / "classify" / "val").exists()
    assert (tmp_path / "segment" / "test" / "images").is_dir()
