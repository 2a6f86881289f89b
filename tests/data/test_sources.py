"""prepare.source: synthetic, segmentation folders and class folders, each with its own split
fractions or role; class folders other than crack/no_crack make an N-class classification set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fissure.cli import main
from fissure.data.prepare import dvc_dep_warnings, load_params, make_params, prepare
from fissure.data.synth import write_dataset
from fissure.errors import DataError

from ..conftest import REPO_ROOT

SMALL = dict(count=10, size=96, seed=3, patch_size=48, patch_stride=40, feedback=None)
CLASSES = {"free": 12, "blowhole": 7, "crack": 5}  # folder name -> images


def write_class_folders(root: Path, counts: dict[str, int] = CLASSES, size=(40, 56), seed=0) -> Path:
    """``root/<class>/<class>_<i>.png``: grey images with a class-dependent dark mark."""
    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.normal(150, 8, size).clip(0, 255)
            if k:
                img[:, 5 * k : 5 * k + 4] = 40  # a stripe whose place names the class
            Image.fromarray(img.astype(np.uint8), "L").save(root / name / f"{name}_{i:02d}.png")
    return root


def _params(tmp_path, section: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"prepare": section}))
    return path


def _names(folder: Path) -> set[str]:
    return {p.stem for p in folder.rglob("*.jpg")}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("source, message", [
    ([{"path": "d", "val_fraction": 1.5}], "prepare.source[0].val_fraction: Input should be less than 1"),
    (["synth", {"path": "d", "test_fraction": "0.2"}], "prepare.source[1].test_fraction: Input should be a valid number"),
    ([{"pth": "d"}], "prepare.source[0].pth: unknown key; known keys: path, layout, role, val_fraction, test_fraction"),
    ([{"path": "d", "role": "holdout"}], "prepare.source[0].role: Input should be 'split', 'train', 'val' or 'test'"),
    ([{"path": "d", "layout": "coco"}], "prepare.source[0].layout: Input should be 'auto', 'segment' or 'classes'"),
    (["synth", {"path": "d", "role": "test", "test_fraction": 0.5}],
     "prepare.source[1]: role test puts the whole source in test; val_fraction/test_fraction are for role: split"),
    ([{"path": "d", "val_fraction": 0.5, "test_fraction": 0.5}],
     "prepare.source[0]: val_fraction + test_fraction must leave something to train on"),
    ([{"path": "d", "test_fraction": 0.9}], "prepare: source[0] (d): its val_fraction + test_fraction must leave"),
    ([{"path": "d", "role": "test"}], "prepare: every source is held back"),
    (["synth", {"path": "synth"}], "prepare: source synth is listed twice"),
    ([{"path": "synth", "layout": "classes"}], "prepare.source[0]: synth is a segmentation source"),
    ([{"path": ""}], "prepare.source[0].path: String should have at least 1 character"),
])
def test_a_bad_source_names_its_index_and_key(tmp_path, source, message):
    path = _params(tmp_path, {"source": source})
    with pytest.raises(DataError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


def test_a_bad_source_on_the_command_line_is_one_line_exit_1(tmp_path, capsys):
    path = _params(tmp_path, {"source": [{"path": "d", "val_fraction": 2.0}]})
    rc = main(["data", "prepare", "--params", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0] == f"fissure: error: {path}: prepare.source[0].val_fraction: Input should be less than 1"


def test_the_string_form_and_a_single_mapping_still_work():
    assert make_params({"source": "synth"}).source == ["synth"]
    params = make_params({"source": {"path": "data/x", "role": "train"}, "val_fraction": 0.2})
    [src] = params.sources()
    assert (src.path, src.role, src.val_fraction) == ("data/x", "train", 0.2)
    mixed = make_params({"source": ["synth", {"path": "data/y", "test_fraction": 0.3}]}).sources()
    assert [(s.path, s.val_fraction, s.test_fraction) for s in mixed] == [("synth", 0.15, 0.15), ("data/y", 0.15, 0.3)]


def test_a_folder_in_no_known_layout_is_one_line(tmp_path):
    (tmp_path / "odd" / "stuff").mkdir(parents=True)
    (tmp_path / "odd" / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"odd: not a dataset folder: a segmentation set needs images/ and masks/"):
        prepare(make_params(dict(SMALL, source=[str(tmp_path / "odd")])), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


# --------------------------------------------------------------------------- segmentation sources


def test_each_source_has_its_own_fractions_and_a_held_back_source_is_all_test(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(a, "segment", 20, seed=1, size=96)
    write_dataset(b, "segment", 6, seed=2, size=96)
    source = [{"path": str(tmp_path / "a"), "val_fraction": 0.1, "test_fraction": 0.4},
              {"path": str(tmp_path / "b"), "role": "test"}, "synth"]
    m = prepare(make_params(dict(SMALL, source=source)), tmp_path / "out")
    by = {s["source"]: s for s in m["sources"]}
    assert by[str(a)]["splits"] == {"train": 10, "val": 2, "test": 8}
    assert by[str(b)]["splits"] == {"train": 0, "val": 0, "test": 6} and by[str(b)]["role"] == "test"
    assert by["synth"]["splits"] == {"train": 6, "val": 2, "test": 2}  # the section's 0.15/0.15 of 10
    tag = f"{tmp_path.name}-b-"  # ids are <parent>-<folder>-<stem>
    assert sum(1 for s in _names(tmp_path / "out" / "segment" / "test") if s.startswith(tag)) == 6
    assert not any(s.startswith(tag) for s in _names(tmp_path / "out" / "segment" / "train"))
    assert m["classify"] == {"classes": ["no_crack", "crack"], "from": "patches"}


# --------------------------------------------------------------------------- class-folder sources


@pytest.mark.parametrize("layout", ["<class>/", "images/<class>/"])
def test_class_folders_make_an_n_class_set_split_per_class(tmp_path, layout):
    src = tmp_path / "mt"
    write_class_folders(src if layout == "<class>/" else src / "images")
    if layout == "images/<class>/":  # the shared magnetic-tile layout keeps masks/<class>/ beside
        (src / "masks" / "free").mkdir(parents=True)
    logs = []
    params = make_params(dict(SMALL, source=["synth", str(src)]))
    m = prepare(params, tmp_path / "out", log=logs.append)
    assert m["classify"] == {"classes": ["free", "blowhole", "crack"], "from": "class folders"}
    counts = m["counts"]["classify"]
    for split in ("train", "val", "test"):
        assert set(counts[split]) == {"free", "blowhole", "crack"}
        assert all(n >= 1 for n in counts[split].values())  # stratified: every class in every split
        for name, n in counts[split].items():
            assert len(list((tmp_path / "out" / "classify" / split / name).glob("*.jpg"))) == n
    assert {c: sum(counts[s][c] for s in counts) for c in CLASSES} == CLASSES
    assert not (tmp_path / "out" / "classify" / "train" / "no_crack").exists()  # no patches
    assert any("no crack/no_crack patches are cut" in line for line in logs)
    assert sum(m["counts"]["segment"].values()) == 10  # the segmenter still gets synth
    # an image is in exactly one split, under its own class
    seen = {}
    for p in (tmp_path / "out" / "classify").rglob("*.jpg"):
        assert p.stem not in seen
        seen[p.stem] = p.parent.name
        assert p.stem.split("-")[-1].startswith(p.parent.name)
    assert len(seen) == sum(CLASSES.values())
    info = m["sources"][1]
    assert info["layout"] == "classes" and info["classes"] == {"free": 12, "blowhole": 7, "crack": 5}


def test_class_folder_split_is_deterministic_and_images_are_fitted(tmp_path):
    src = write_class_folders(tmp_path / "mt", size=(60, 700))  # 700 px wide: over max_side
    params = make_params(dict(SMALL, source=[str(src)], max_side=256))
    first = prepare(params, tmp_path / "one")
    second = prepare(params, tmp_path / "two")
    assert first["content_hash"] == second["content_hash"]
    img = Image.open(next((tmp_path / "one" / "classify" / "train" / "free").glob("*.jpg")))
    assert img.size == (256, 22) and img.mode == "RGB"
    assert not (tmp_path / "one" / "segment").exists()  # no segmentation source


def test_crack_and_no_crack_folders_join_the_patches(tmp_path):
    src = write_class_folders(tmp_path / "own", {"no_crack": 6, "crack": 6})
    m = prepare(make_params(dict(SMALL, source=["synth", str(src)])), tmp_path / "out")
    assert m["classify"]["from"] == "patches"
    train = tmp_path / "out" / "classify" / "train"
    own = list(train.rglob(f"{tmp_path.name}-own-*.jpg"))
    patches = list(train.rglob("synth-*_y*.jpg"))
    assert own and patches
    assert {p.parent.name for p in own if "-own-crack_" in p.name} == {"crack"}
    assert {p.parent.name for p in own if "-own-no_crack_" in p.name} == {"no_crack"}


def test_feedback_of_an_n_class_model_keeps_its_labels(tmp_path):
    src = write_class_folders(tmp_path / "mt")
    fb = write_class_folders(tmp_path / "fb" / "images", {"blowhole": 2, "no_crack": 1}, seed=5)
    logs = []
    m = prepare(make_params(dict(SMALL, source=[str(src)], feedback=str(tmp_path / "fb"))), tmp_path / "out",
                log=logs.append)
    train = tmp_path / "out" / "classify" / "train"
    assert len(list((train / "blowhole").glob("feedback-*.jpg"))) == 2
    assert not (train / "no_crack").exists() and not (train / "crack" / "feedback-no_crack_00.jpg").exists()
    assert any("['no_crack'] are not among the classes" in line for line in logs)
    assert m["feedback"]["items"] == 2


def test_cli_takes_a_class_folder_source_from_params(tmp_path, capsys):
    src = write_class_folders(tmp_path / "mt")
    path = _params(tmp_path, {"source": [{"path": str(src), "val_fraction": 0.2, "test_fraction": 0.2}],
                              "feedback": None})
    assert main(["data", "prepare", "--params", str(path), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"{src}: 24 images -> train" in err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["sources"][0]["val_fraction"] == 0.2 and m["classify"]["classes"][0] == "free"


# --------------------------------------------------------------------------- DVC deps


def _dvc_repo(tmp_path, deps) -> dict:
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {"cmd": "x", "deps": deps}}}))
    return {"DVC_ROOT": str(tmp_path), "DVC_STAGE": "prepare"}


def test_under_dvc_a_folder_that_is_not_a_dep_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = _dvc_repo(tmp_path, ["data/feedback", "data/sources"])
    params = make_params({"source": ["synth", "data/sources/site-a", {"path": "data/other", "role": "test"}]})
    warnings = dvc_dep_warnings(params, env)
    assert len(warnings) == 1 and warnings[0].startswith("warning: data/other is not among the deps of dvc.yaml's "
                                                         "prepare stage")
    assert dvc_dep_warnings(params, {}) == []  # not under DVC: nothing to check


def test_the_repository_pipeline_depends_on_every_folder_params_yaml_lists():
    """dvc.yaml's prepare deps follow params.yaml's prepare.source (a folder added to one needs the other)."""
    params = make_params(load_params(REPO_ROOT / "params.yaml"))
    assert dvc_dep_warnings(params, {"DVC_ROOT": str(REPO_ROOT), "DVC_STAGE": "prepare"}) == []


def test_one_stem_in_two_class_folders_is_one_line(tmp_path):
    src = write_class_folders(tmp_path / "mt", {"free": 3, "crack": 3})
    Image.open(src / "free" / "free_00.png").save(src / "crack" / "free_00.jpg")
    with pytest.raises(DataError, match=r"mt: two images with the file stem free_00 \(an image id is its stem"):
        prepare(make_params(dict(SMALL, source=[str(src)])), tmp_path / "out")
