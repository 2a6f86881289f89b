"""prepare.source: synthetic, segmentation folders and class folders, each with its own split
fractions or role; class folders other than crack/no_crack make an N-class classification set."""

from __future__ import annotations

import json
import re
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


# --------------------------------------------------------------------------- one folder, two spellings


def test_one_folder_spelled_two_ways_is_listed_twice(tmp_path, monkeypatch, capsys):
    """data/cf and ./data/cf/ (or a link to it) are one folder: split twice, its images would land in
    train under one id and in test under another (a leak), so it is refused like the same string twice."""
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "data" / "cf", "segment", 4, seed=1, size=96)
    (tmp_path / "link").symlink_to(tmp_path / "data" / "cf")
    for second in ("./data/cf/", str(tmp_path / "data" / "cf"), "link"):
        twice = rf"^prepare: source {re.escape(second)} is listed twice \(also as data/cf\)$"
        with pytest.raises(DataError, match=twice):
            make_params({"source": ["data/cf", second]})
    rc = main(["data", "prepare", "--source", "data/cf", "--source", "./data/cf/", "--feedback", "", "--out", "o"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["fissure: error: source ./data/cf/ is listed twice (also as data/cf)"], err
    assert not (tmp_path / "o").exists()
    assert len(make_params({"source": ["synth", "data/cf"]}).sources()) == 2  # different folders are fine


# --------------------------------------------------------------------------- Positive / Negative


def test_positive_and_negative_folders_are_crack_and_no_crack_beside_synth(tmp_path):
    """The METU set's Positive/Negative (any known negative and positive names) are the binary
    crack classes: they join the synthetic crack/no_crack patches instead of replacing them."""
    src = write_class_folders(tmp_path / "ren", {"Negative": 6, "Positive": 6})
    logs = []
    m = prepare(make_params(dict(SMALL, source=["synth", str(src)])), tmp_path / "out", log=logs.append)
    assert m["classify"] == {"classes": ["no_crack", "crack"], "from": "patches"}
    assert m["sources"][1]["classes"] == {"no_crack": 6, "crack": 6}
    train = tmp_path / "out" / "classify" / "train"
    assert sorted(p.name for p in train.iterdir() if not p.name.startswith(".")) == ["crack", "no_crack"]
    assert {p.parent.name for p in train.rglob("*-ren-Positive_*.jpg")} == {"crack"}
    assert {p.parent.name for p in train.rglob("*-ren-Negative_*.jpg")} == {"no_crack"}
    assert list(train.rglob("synth-*_y*.jpg"))  # the synthetic patches are kept
    assert any("Negative -> no_crack, Positive -> crack" in line for line in logs)


def test_a_binary_model_reads_positive_and_negative_folders_and_the_other_way_round(tmp_path):
    """What `fissure evaluate` (and the gate) read a class folder with: eval_items(task, folder,
    the model's classes) -> loaders.classification_set."""
    from fissure.data.loaders import classification_set
    from fissure.training.datasets import eval_items

    ren = write_class_folders(tmp_path / "ren", {"Negative": 2, "Positive": 3})
    items, classes = eval_items("classify", ren, ["no_crack", "crack"])
    assert classes == ["no_crack", "crack"]
    assert sorted((p.parent.name, k) for p, k in items) == [("Negative", 0)] * 2 + [("Positive", 1)] * 3
    own = write_class_folders(tmp_path / "own", {"no_crack": 2, "crack": 1})
    cset = classification_set(own, ["Negative", "Positive"])  # a model trained on the Positive/Negative folders
    assert sorted((p.parent.name, k) for p, k in cset.items) == [("crack", 1), ("no_crack", 0), ("no_crack", 0)]
    assert classification_set(ren).classes == ["Negative", "Positive"]  # read alone: the folder names
    with pytest.raises(DataError, match=r"class folders \['Negative', 'Positive'\] are not among the model's"):
        classification_set(ren, ["free", "blowhole", "crack"])  # not a crack / no-crack model


def test_defect_classes_are_not_renamed(tmp_path):
    src = write_class_folders(tmp_path / "mt")  # free, blowhole, crack: blowhole is no crack name
    m = prepare(make_params(dict(SMALL, source=[str(src)])), tmp_path / "out")
    assert m["classify"] == {"classes": ["free", "blowhole", "crack"], "from": "class folders"}


# --------------------------------------------------------------------------- split folders


def _split_source(root: Path, test_classes: dict[str, int]) -> Path:
    """``root/train/{no_crack,crack}`` and ``root/test/<classes>``, as `fissure data import` writes a split set."""
    write_class_folders(root / "train", {"no_crack": 6, "crack": 6})
    write_class_folders(root / "test", test_classes, seed=1)
    return root


def test_a_folder_of_splits_says_how_to_list_them(tmp_path, capsys):
    src = _split_source(tmp_path / "pn2", {"no_crack": 2, "crack": 2})
    (src / "val").mkdir()
    rc = main(["data", "prepare", "--source", str(src), "--feedback", "", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0] == (f"fissure: error: {src}: holds the splits train/, val/, test/, not one dataset: list each split "
                      f"as a source of prepare.source in params.yaml: {src}/train and {{path: {src}/val, role: val}} "
                      f"and {{path: {src}/test, role: test}}")
    with pytest.raises(DataError, match=r"pn2: holds the splits train/, val/, test/"):
        prepare(make_params(dict(SMALL, source=[{"path": str(src), "layout": "classes"}])), tmp_path / "out")


def test_a_held_back_split_of_one_class_is_a_source(tmp_path):
    """The way the split message names: train/ as a source and test/ held back, here positives only."""
    src = _split_source(tmp_path / "pn2", {"crack": 3})
    m = prepare(make_params(dict(SMALL, source=[str(src / "train"), {"path": str(src / "test"), "role": "test"}])),
                tmp_path / "out")
    by = {s["source"]: s for s in m["sources"]}
    assert by[str(src / "test")]["splits"] == {"train": 0, "val": 0, "test": 3}
    assert by[str(src / "test")]["classes"] == {"crack": 3}
    assert m["classify"]["classes"] == ["no_crack", "crack"]
    assert m["counts"]["classify"]["test"]["crack"] >= 3
    with pytest.raises(DataError, match="pn2/test: layout classes needs"):  # a source to train on needs two
        prepare(make_params(dict(SMALL, source=[{"path": str(src / "test"), "layout": "classes"}, "synth"])),
                tmp_path / "out2")
    odd = write_class_folders(tmp_path / "odd", {"photos": 2})
    for held in ([{"path": str(odd), "role": "test"}],
                 # two held-back sources of the class do not make it a trained one
                 [{"path": str(odd), "role": "val"}, {"path": str(write_class_folders(tmp_path / "odd2", {"photos": 2})),
                                                      "role": "test"}]):
        with pytest.raises(DataError, match=r"odd: holds class\(es\) photos, which no training source has "
                                            r"\(they train crack, no_crack\)"):
            prepare(make_params(dict(SMALL, source=[str(src / "train"), *held])), tmp_path / "out3")
