"""`fissure data import`: each public layout, on small generated fixtures, becomes the layouts of
docs/data.md; bad sources are one line and exit 1; re-runs are idempotent; the real sets in
../shared import too (realdata)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fissure.cli import main
from fissure.data import importers
from fissure.data.loaders import classification_set, segmentation_items
from fissure.errors import DataError

H, W = 24, 32


def _image(path: Path, seed: int, size: tuple[int, int] = (W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _crack(seed: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """A diagonal line of crack pixels (none for seed 0)."""
    mask = np.zeros(shape, bool)
    if seed:
        rows = np.arange(shape[0])
        mask[rows, (rows + seed) % shape[1]] = True
    return mask


def _save_mask(path: Path, mask: np.ndarray, on: int = 255, off: int = 0, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, on, off).astype(np.uint8), "L").convert(mode).save(path)
    return path


def _save_mat(path: Path, mask: np.ndarray) -> Path:
    """A .mat file shaped like CrackForest's: a 1x1 cell holding a struct with Segmentation
    (1 background, 2 crack) and Boundaries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    struct = np.empty((1, 1), dtype=[("Segmentation", "O"), ("Boundaries", "O")])
    struct[0, 0]["Segmentation"] = np.where(mask, 2, 1).astype(np.uint8)
    struct[0, 0]["Boundaries"] = mask.astype(np.uint8)
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = struct
    scipy.io.savemat(path, {"groundTruth": cell})
    return path


def _read_mask(path: Path) -> np.ndarray:
    arr = np.asarray(Image.open(path))
    assert set(np.unique(arr).tolist()) <= {0, 255}, path
    return arr == 255


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _one_line_error(capsys, argv: list[str], match: str, code: int = 1) -> str:
    rc, err = _run(capsys, argv)
    lines = [line for line in err.strip().splitlines() if line.startswith(("fissure: error:", "Error:"))]
    assert rc == code, err
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def crackforest(tmp_path) -> Path:
    """CrackForest as downloaded: image/*.jpg, groundTruth/*.mat, seg/*.seg."""
    src = tmp_path / "CrackForest-dataset"
    for i in (1, 2, 3):
        _image(src / "image" / f"{i:03d}.jpg", i)
        _save_mat(src / "groundTruth" / f"{i:03d}.mat", _crack(i - 1))  # 001 has no crack
        (src / "seg").mkdir(exist_ok=True)
        (src / "seg" / f"{i:03d}.seg").write_text("format ascii cr\n")
    return src


@pytest.fixture
def deepcrack(tmp_path) -> Path:
    """DeepCrack as unzipped: train_img/ + train_lab/ (.png 0/255), test_img/ + test_lab/ (.bmp 0/1)."""
    src = tmp_path / "DeepCrack"
    for i in (1, 2, 3):
        _image(src / "train_img" / f"1111{i}.jpg", i)
        _save_mask(src / "train_lab" / f"1111{i}.png", _crack(i))
    for i in (4, 5):
        _image(src / "test_img" / f"1111{i}.jpg", i)
        _save_mask(src / "test_lab" / f"1111{i}.bmp", _crack(i), on=1)
    return src


@pytest.fixture
def classes(tmp_path) -> Path:
    src = tmp_path / "concrete"
    for i in range(3):
        _image(src / "Positive" / f"p{i}.jpg", i)
        _image(src / "Negative" / f"n{i}.png", 10 + i)
    (src / "Negative" / "readme.txt").write_text("not an image")
    (src / "Negative" / ".DS_Store").write_bytes(b"\0")
    return src


@pytest.fixture
def pairs(tmp_path) -> Path:
    """images/ + masks/ with a subfolder and a `_mask` suffix."""
    src = tmp_path / "pairs"
    _image(src / "images" / "a.jpg", 1)
    _save_mask(src / "masks" / "a_mask.png", _crack(1))
    _image(src / "images" / "wide" / "b.png", 2)
    _save_mask(src / "masks" / "wide" / "b.png", _crack(2), on=1)
    return src


# --------------------------------------------------------------------------- formats


def test_crackforest_mat(capsys, crackforest, tmp_path):
    dst = tmp_path / "out"
    rc, err = _run(capsys, ["data", "import", "--format", "crackforest", str(crackforest), str(dst)])
    assert rc == 0, err
    assert "imported 3 image/mask pairs (crackforest)" in err
    assert f"all: 3 images (2 with crack) -> {dst / 'images'}" in err
    items = segmentation_items(dst)
    assert [it.image.name for it in items] == ["001.jpg", "002.jpg", "003.jpg"]
    for i, it in enumerate(items):
        assert it.image.read_bytes() == (crackforest / "image" / it.image.name).read_bytes()  # copied unchanged
        assert (_read_mask(it.mask) == _crack(i)).all()
    manifest = json.loads((dst / "import.json").read_text())
    assert manifest["complete"] and manifest["format"] == "crackforest"
    assert manifest["counts"] == {"all": {"images": 3, "with_crack": 2}}


def test_crackforest_mat_access_path(crackforest):
    """The layout the brief documents: groundTruth[0][0]['Segmentation'] == 2 is crack."""
    mat = scipy.io.loadmat(crackforest / "groundTruth" / "002.mat")
    seg = mat["groundTruth"][0][0]["Segmentation"][0][0]
    assert ((seg == 2) == _crack(1)).all()
    assert (importers._mat_segmentation(crackforest / "groundTruth" / "002.mat") == _crack(1)).all()


def test_crackforest_converted_pngs(capsys, tmp_path):
    """Already converted masks: 1/2 as in the .mat, or 0/255."""
    src = tmp_path / "cfd"
    _image(src / "images" / "001.jpg", 1)
    _save_mask(src / "gt" / "001.png", _crack(3), on=2, off=1)
    _image(src / "images" / "002.jpg", 2)
    _save_mask(src / "gt" / "002.png", _crack(4))
    dst = tmp_path / "out"
    rc, err = _run(capsys, ["data", "import", "--format", "crackforest", str(src), str(dst)])
    assert rc == 0, err
    assert (_read_mask(dst / "masks" / "001.png") == _crack(3)).all()
    assert (_read_mask(dst / "masks" / "002.png") == _crack(4)).all()


def test_deepcrack(capsys, deepcrack, tmp_path):
    dst = tmp_path / "deepcrack"
    rc, err = _run(capsys, ["data", "import", "--format", "deepcrack", str(deepcrack), str(dst)])
    assert rc == 0, err
    assert "imported 5 image/mask pairs (deepcrack)" in err and "10 files written" in err
    assert "test: 2 images (2 with crack)" in err and "train: 3 images (3 with crack)" in err
    for split, ids in (("train", (1, 2, 3)), ("test", (4, 5))):
        items = segmentation_items(dst / split)
        assert [it.image.stem for it in items] == [f"1111{i}" for i in ids]
        for i, it in zip(ids, items):
            assert (_read_mask(it.mask) == _crack(i)).all()  # .bmp 0/1 and .png 0/255 alike


def test_deepcrack_one_level_down(capsys, deepcrack, tmp_path):
    """A zip often unpacks into a folder of its own."""
    outer = tmp_path / "download"
    outer.mkdir()
    deepcrack.rename(outer / "DeepCrack")
    rc, err = _run(capsys, ["data", "import", "--format", "deepcrack", str(outer), str(tmp_path / "o")])
    assert rc == 0, err
    assert len(segmentation_items(tmp_path / "o" / "train")) == 3


def test_folder_of_classes(capsys, classes, tmp_path):
    dst = tmp_path / "cls"
    rc, err = _run(capsys, ["data", "import", "--format", "folder-of-classes", str(classes), str(dst)])
    assert rc == 0, err
    assert "imported 6 images (folder-of-classes)" in err
    assert f"Negative: 3 images -> {dst / 'Negative'}" in err and "Positive: 3 images" in err
    cs = classification_set(dst)
    assert cs.classes == ["Negative", "Positive"]  # the negative name sorts first
    assert sorted(p.name for p, _ in cs.items) == ["n0.png", "n1.png", "n2.png", "p0.jpg", "p1.jpg", "p2.jpg"]


def test_magnetic_tile_and_split_layouts(capsys, tmp_path):
    """MT_<Class>/Imgs/ with .png masks beside the .jpg images; train/ and test/ of classes."""
    mt = tmp_path / "Magnetic-tile-defect-datasets"
    for cls, n in (("MT_Blowhole", 2), ("MT_Free", 3)):
        for i in range(n):
            _image(mt / cls / "Imgs" / f"exp1_num_{i}.jpg", i)
            _save_mask(mt / cls / "Imgs" / f"exp1_num_{i}.png", _crack(i))
    rc, err = _run(capsys, ["data", "import", "--format", "folder-of-classes", str(mt), str(tmp_path / "mt")])
    assert rc == 0, err
    cs = classification_set(tmp_path / "mt")
    assert cs.classes == ["free", "blowhole"] and len(cs.items) == 5
    assert sorted(p.name for p in (tmp_path / "mt" / "blowhole").iterdir()) == ["exp1_num_0.jpg", "exp1_num_1.jpg"]

    split = tmp_path / "split"
    for s in ("train", "test"):
        for c in ("crack", "no_crack"):
            _image(split / s / c / "x.jpg", 1)
    rc, err = _run(capsys, ["data", "import", "--format", "folder-of-classes", str(split), str(tmp_path / "s")])
    assert rc == 0, err
    assert "train/crack: 1 images" in err and "test/no_crack: 1 images" in err
    assert classification_set(tmp_path / "s" / "test").classes == ["no_crack", "crack"]


def test_images_masks(capsys, pairs, tmp_path):
    dst = tmp_path / "seg"
    rc, err = _run(capsys, ["data", "import", "--format", "images-masks", str(pairs), str(dst)])
    assert rc == 0, err
    items = segmentation_items(dst)
    assert [(it.image.name, it.mask.name) for it in items] == [("a.jpg", "a.png"), ("wide-b.png", "wide-b.png")]
    assert (_read_mask(items[1].mask) == _crack(2)).all()


def test_images_masks_with_splits(capsys, tmp_path):
    src = tmp_path / "ds"
    for s in ("train", "val"):
        _image(src / s / "images" / "a.jpg", 1)
        _save_mask(src / s / "masks" / "a.png", _crack(1))
    rc, err = _run(capsys, ["data", "import", "--format", "images-masks", str(src), str(tmp_path / "o")])
    assert rc == 0, err
    assert len(segmentation_items(tmp_path / "o" / "train")) == len(segmentation_items(tmp_path / "o" / "val")) == 1


def test_formats_match_the_cli():
    from fissure.cli.data import import_cmd

    choices = next(p for p in import_cmd.params if p.name == "fmt").type.choices
    assert tuple(choices) == importers.FORMATS


# --------------------------------------------------------------------------- re-runs


def test_rerun_is_idempotent_and_removes_stale_files(capsys, deepcrack, tmp_path):
    dst = tmp_path / "dc"
    argv = ["data", "import", "--format", "deepcrack", str(deepcrack), str(dst)]
    assert _run(capsys, argv)[0] == 0
    (dst / ".gitkeep").write_text("")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in dst.rglob("*") if p.is_file()}
    rc, err = _run(capsys, argv)
    assert rc == 0 and "0 files written, 10 unchanged, 0 stale removed" in err, err
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in dst.rglob("*") if p.is_file()} == before

    for sub in ("test_img/11114.jpg", "test_lab/11114.bmp"):
        (deepcrack / sub).unlink()
    rc, err = _run(capsys, argv)
    assert rc == 0 and "0 files written, 8 unchanged, 2 stale removed" in err, err
    assert [it.image.stem for it in segmentation_items(dst / "test")] == ["11115"]
    assert (dst / ".gitkeep").exists()


def test_failed_import_can_be_rerun(capsys, deepcrack, tmp_path):
    dst = tmp_path / "dc"
    bad = deepcrack / "train_img" / "11112.jpg"
    good = bad.read_bytes()
    bad.write_bytes(b"not a jpeg at all")
    _one_line_error(capsys, ["data", "import", "--format", "deepcrack", str(deepcrack), str(dst)], "11112.jpg: not an image")
    assert json.loads((dst / "import.json").read_text())["complete"] is False
    bad.write_bytes(good)
    rc, err = _run(capsys, ["data", "import", "--format", "deepcrack", str(deepcrack), str(dst)])
    assert rc == 0, err
    assert json.loads((dst / "import.json").read_text())["complete"] is True


def test_progress_lines_for_long_imports(capsys, tmp_path):
    src = tmp_path / "many"
    for c in ("crack", "no_crack"):
        for i in range(25):
            _image(src / c / f"{i}.png", i, size=(4, 4))
    rc, err = _run(capsys, ["data", "import", "--format", "folder-of-classes", str(src), str(tmp_path / "o")])
    assert rc == 0
    assert "import folder-of-classes: images 50/50" in err and "images 5/50" in err
    rc, err = _run(capsys, ["data", "import", "--format", "folder-of-classes", "--no-progress", str(src),
                            str(tmp_path / "o")])
    assert rc == 0 and "images 5/50" not in err and "0 files written, 50 unchanged" in err


def test_help(capsys):
    assert main(["data", "import", "--help"]) == 0
    out = capsys.readouterr().out
    for word in ("--format", "crackforest", "deepcrack", "folder-of-classes", "images-masks", "SRC DST",
                 "import.json"):
        assert word in out


# --------------------------------------------------------------------------- errors


def test_missing_and_empty_source(capsys, tmp_path):
    _one_line_error(capsys, ["data", "import", "--format", "deepcrack", str(tmp_path / "nope"), str(tmp_path / "o")],
                    "no such folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["data", "import", "--format", "crackforest", str(tmp_path / "empty"), str(tmp_path / "o")],
                    "empty folder")
    (tmp_path / "empty" / "image").mkdir()
    _one_line_error(capsys, ["data", "import", "--format", "crackforest", str(tmp_path / "empty"), str(tmp_path / "o")],
                    "no CrackForest images")
    (tmp_path / "empty" / "x_img").mkdir()
    _one_line_error(capsys, ["data", "import", "--format", "deepcrack", str(tmp_path / "empty"), str(tmp_path / "o")],
                    "has no labels folder (x_lab/)")


def test_unknown_format_is_a_usage_error(capsys, classes, tmp_path):
    _one_line_error(capsys, ["data", "import", "--format", "coco", str(classes), str(tmp_path / "o")],
                    "coco", code=2)
    with pytest.raises(DataError, match="unknown format"):
        importers.import_dataset("coco", classes, tmp_path / "o")


def test_mismatched_pairs(capsys, deepcrack, pairs, tmp_path):
    (deepcrack / "train_lab" / "11112.png").unlink()
    _one_line_error(capsys, ["data", "import", "--format", "deepcrack", str(deepcrack), str(tmp_path / "o")],
                    "no mask for 11112.jpg")
    (pairs / "images" / "a.jpg").unlink()
    _one_line_error(capsys, ["data", "import", "--format", "images-masks", str(pairs), str(tmp_path / "o2")],
                    "no image for the mask(s) a_mask.png")


def test_unreadable_files(capsys, crackforest, pairs, tmp_path):
    (crackforest / "image" / "002.jpg").write_bytes(b"\xff\xd8 truncated")
    _one_line_error(capsys, ["data", "import", "--format", "crackforest", str(crackforest), str(tmp_path / "o")],
                    "002.jpg: not an image")
    _image(crackforest / "image" / "002.jpg", 2)
    (crackforest / "groundTruth" / "003.mat").write_bytes(b"MATLAB garbage")
    _one_line_error(capsys, ["data", "import", "--format", "crackforest", str(crackforest), str(tmp_path / "o")],
                    "003.mat: unreadable .mat file")
    scipy.io.savemat(crackforest / "groundTruth" / "003.mat", {"other": np.zeros(3)})
    _one_line_error(capsys, ["data", "import", "--format", "crackforest", str(crackforest), str(tmp_path / "o")],
                    "003.mat: no groundTruth variable (has other)")
    (pairs / "masks" / "a_mask.png").write_bytes(b"png?")
    _one_line_error(capsys, ["data", "import", "--format", "images-masks", str(pairs), str(tmp_path / "o2")],
                    "a_mask.png: unreadable mask")


def test_mask_of_another_size(capsys, pairs, tmp_path):
    _save_mask(pairs / "masks" / "a_mask.png", np.zeros((H + 1, W), bool))
    _one_line_error(capsys, ["data", "import", "--format", "images-masks", str(pairs), str(tmp_path / "o")],
                    f"image is {W}x{H} but its mask a_mask.png is {W}x{H + 1}")


def test_one_class_only(capsys, tmp_path):
    _image(tmp_path / "src" / "crack" / "a.jpg", 1)
    (tmp_path / "src" / "empty").mkdir()
    _one_line_error(capsys, ["data", "import", "--format", "folder-of-classes", str(tmp_path / "src"),
                             str(tmp_path / "o")], "need images in at least two class folders")


def test_destination_is_protected(capsys, classes, tmp_path):
    other = tmp_path / "mine"
    (other / "notes").mkdir(parents=True)
    (other / "notes" / "keep.txt").write_text("mine")
    _one_line_error(capsys, ["data", "import", "--format", "folder-of-classes", str(classes), str(other)],
                    "not empty and not written by fissure data import")
    assert (other / "notes" / "keep.txt").read_text() == "mine"
    _one_line_error(capsys, ["data", "import", "--format", "folder-of-classes", str(classes), str(classes / "out")],
                    "must be outside the source")
    _one_line_error(capsys, ["data", "import", "--format", "folder-of-classes", str(classes), str(classes)],
                    "must be outside the source")


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_deepcrack_and_magnetic_tile(capsys, shared_datasets, tmp_path):
    """DeepCrack's own layout rebuilt (links) from 24 of the shared images; the shared
    magnetic-tile set's class folders, whole."""
    train = shared_datasets / "deepcrack" / "train"
    if not (train / "images").is_dir() or not (shared_datasets / "magnetic-tile" / "train" / "images").is_dir():
        pytest.skip("deepcrack/train or magnetic-tile/train missing from the shared datasets")
    src = tmp_path / "DeepCrack"
    images = sorted((train / "images").glob("*.jpg"))[:24]
    for k, img in enumerate(images):
        split = "test" if k % 4 == 0 else "train"
        for sub, path in ((f"{split}_img", img), (f"{split}_lab", train / "masks" / f"{img.stem}.png")):
            (src / sub).mkdir(parents=True, exist_ok=True)
            (src / sub / path.name).symlink_to(path)
    dst = tmp_path / "deepcrack"
    rc, err = _run(capsys, ["data", "import", "--format", "deepcrack", str(src), str(dst)])
    assert rc == 0, err
    assert "test: 6 images (6 with crack)" in err and "train: 18 images (18 with crack)" in err
    for it in segmentation_items(dst / "train") + segmentation_items(dst / "test"):
        source_mask = np.asarray(Image.open(train / "masks" / it.mask.name)) > 0
        assert (_read_mask(it.mask) == source_mask).all()
        assert it.image.read_bytes() == (train / "images" / it.image.name).read_bytes()

    mt = shared_datasets / "magnetic-tile" / "train"
    dst = tmp_path / "mt"
    rc, err = _run(capsys, ["data", "import", "--format", "folder-of-classes", str(mt), str(dst)])
    assert rc == 0, err
    expected = {d.name: len(list(d.glob("*.jpg"))) for d in (mt / "images").iterdir() if d.is_dir()}
    assert len(expected) >= 2
    got = {d.name: len(list(d.iterdir())) for d in dst.iterdir() if d.is_dir()}
    assert got == expected
    assert set(classification_set(dst).classes) == set(expected)
    for cls, n in expected.items():
        assert f"{cls}: {n} images" in err


def test_a_held_back_split_may_hold_one_class_and_the_import_is_a_prepare_source(capsys, tmp_path):
    """train/ + test/ where test/ holds positives only (common for a held-back set): imported; then
    `prepare --source DST` names how to list the splits, and that way works."""
    src = tmp_path / "src"
    for i in range(4):
        _image(src / "train" / "crack" / f"c{i}.jpg", i)
        _image(src / "train" / "no_crack" / f"n{i}.jpg", 10 + i)
    for i in range(2):
        _image(src / "test" / "crack" / f"t{i}.jpg", 20 + i)
    (src / "test" / "no_crack").mkdir()
    dst = tmp_path / "pn2"
    rc, err = _run(capsys, ["data", "import", "--format", "folder-of-classes", str(src), str(dst)])
    assert rc == 0, err
    assert "test/crack: 2 images" in err and not (dst / "test" / "no_crack").exists()

    line = _one_line_error(capsys, ["data", "prepare", "--source", str(dst), "--feedback", "",
                                    "--out", str(tmp_path / "out")], "holds the splits train/, test/")
    assert line.endswith(f"{dst}/train and {{path: {dst}/test, role: test}}")
    params = tmp_path / "params.yaml"
    params.write_text(f"prepare:\n  source: [{dst}/train, {{path: {dst}/test, role: test}}]\n  feedback: null\n")
    rc, err = _run(capsys, ["data", "prepare", "--params", str(params), "--out", str(tmp_path / "out")])
    assert rc == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    held = manifest["sources"][1]
    assert held["classes"] == {"crack": 2} and held["splits"] == {"train": 0, "val": 0, "test": 2}
    assert manifest["classify"]["classes"] == ["no_crack", "crack"]


def test_a_training_split_of_one_class_is_refused(capsys, tmp_path):
    for s in ("train", "test"):
        _image(tmp_path / "src" / s / "crack" / "a.jpg", 1)
    _image(tmp_path / "src" / "test" / "no_crack" / "b.jpg", 2)
    _one_line_error(capsys, ["data", "import", "--format", "folder-of-classes", str(tmp_path / "src"),
                             str(tmp_path / "o")], "train: need images in at least two class folders; found crack/")
    (tmp_path / "src" / "train").rename(tmp_path / "src" / "val")
    (tmp_path / "src" / "test" / "no_crack" / "b.jpg").unlink()
    _one_line_error(capsys, ["data", "import", "--format", "folder-of-classes", str(tmp_path / "src"),
                             str(tmp_path / "o")], "src: need images in at least two class folders; found one class "
                                                   "(crack) in every split")
