import numpy as np
import pytest
from PIL import Image

from fissure.data import loaders
from fissure.errors import DataError


def write(path, size=(8, 8), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint8)).save(path)


def test_segmentation_pairs_by_stem(tmp_path):
    write(tmp_path / "images" / "a.jpg")
    write(tmp_path / "images" / "b.png")
    write(tmp_path / "masks" / "a.png", value=255)
    write(tmp_path / "masks" / "b.png")
    items = loaders.segmentation_items(tmp_path)
    assert [i.image.name for i in items] == ["a.jpg", "b.png"]
    assert loaders.detect_task(tmp_path) == "segment"


def test_image_without_mask_is_named(tmp_path):
    write(tmp_path / "images" / "a.jpg")
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no mask for a.jpg"):
        loaders.segmentation_items(tmp_path)


@pytest.mark.parametrize("layout", ["missing", "empty", "no-masks-dir"])
def test_bad_segmentation_folders(tmp_path, layout):
    root = tmp_path / "set"
    if layout != "missing":
        (root / "images").mkdir(parents=True)
    if layout == "empty":
        (root / "masks").mkdir()
    with pytest.raises(DataError):
        loaders.segmentation_items(root)


def test_classification_puts_negative_class_first(tmp_path):
    write(tmp_path / "Positive" / "1.jpg")
    write(tmp_path / "Negative" / "2.jpg")
    ds = loaders.classification_set(tmp_path)
    assert ds.classes == ["Negative", "Positive"]
    assert sorted(label for _, label in ds.items) == [0, 1]
    assert loaders.detect_task(tmp_path) == "classify"


def test_classification_errors(tmp_path):
    with pytest.raises(DataError, match="one folder per class"):
        loaders.classification_set(tmp_path)
    (tmp_path / "crack").mkdir()
    (tmp_path / "no_crack").mkdir()
    with pytest.raises(DataError, match="hold no images"):
        loaders.classification_set(tmp_path)


def test_real_datasets_are_read(shared_datasets):
    items = loaders.segmentation_items(shared_datasets / "crackforest" / "all")
    assert len(items) > 100
