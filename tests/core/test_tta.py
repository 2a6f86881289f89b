"""Test-time augmentation (fissure.models.tta): the views, the averaged model's symmetry, and the
spec's ``tta`` followed wherever a model is loaded (MLflow model, MAR directory, evaluate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fissure.errors import ConfigError
from fissure.models import build_model, default_spec, tta
from fissure.models.io import load_model, save_model


class Lopsided(nn.Module):
    """A segmenter with no symmetry at all: its answer depends on where and which way it looks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 1, 5, padding=2)
        self.ramp = nn.Parameter(torch.linspace(-2, 2, 16).view(1, 1, 1, 16), requires_grad=False)

    def forward(self, x):
        return self.conv(x) + self.ramp[..., : x.shape[-1]]


class LopsidedClassifier(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(3 * 16 * 16, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_each_view_turns_back_and_the_eight_differ():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    views = [tta._view(x, k) for k in range(8)]
    for k, v in enumerate(views):
        assert torch.equal(tta._unview(v, k), x)
    assert len({v.numpy().tobytes() for v in views}) == 8


@pytest.mark.parametrize("mode, mirror", [("flips", lambda x: x.flip(-1)), ("flips", lambda x: x.flip(-2)),
                                          ("d8", lambda x: x.flip(-1)), ("d8", lambda x: x.transpose(-1, -2)),
                                          ("d8", lambda x: torch.rot90(x, 1, (-2, -1)))])
def test_the_averaged_segmenter_follows_the_image_and_the_plain_one_does_not(mode, mirror):
    """Averaged over a group of views, a segmenter's map of a mirrored (or turned) image is its map
    mirrored (turned) too: the answer no longer depends on which way the photo was taken."""
    plain = Lopsided().eval()
    model = tta.wrap(plain, mode)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(mirror(x)), mirror(model(x)), atol=1e-4)
        assert not torch.allclose(plain(mirror(x)), mirror(plain(x)), atol=1e-2)


def test_the_output_is_the_mean_probability_of_the_views():
    plain, x = Lopsided().eval(), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        by_hand = torch.stack([torch.sigmoid(plain(x)), torch.sigmoid(plain(x.flip(-1))).flip(-1),
                               torch.sigmoid(plain(x.flip(-2))).flip(-2),
                               torch.sigmoid(plain(x.flip(-1, -2))).flip(-1, -2)]).mean(0)
        assert torch.allclose(torch.sigmoid(tta.wrap(plain, "flips")(x)), by_hand, atol=1e-5)
        one = tta.wrap(plain, "none")
        assert one is plain and torch.equal(one(x), plain(x))


def test_the_averaged_classifier_returns_log_probabilities_that_ignore_the_view():
    plain, x = LopsidedClassifier().eval(), torch.rand(4, 3, 16, 16)
    model = tta.wrap(plain, "d8")
    with torch.no_grad():
        out = model(x)
        probs = torch.softmax(out, dim=1)
        assert torch.allclose(probs.sum(1), torch.ones(4))
        assert torch.allclose(probs, out.exp(), atol=1e-5)  # softmax gives the averaged probabilities back
        by_hand = torch.stack([torch.softmax(plain(tta._view(x, k)), dim=1) for k in range(8)]).mean(0)
        assert torch.allclose(probs, by_hand, atol=1e-5)
        for turned in (x.flip(-1), x.transpose(-1, -2), torch.rot90(x, 3, (-2, -1))):
            assert torch.allclose(model(turned), out, atol=1e-4)
        assert not torch.allclose(plain(x.flip(-1)), plain(x), atol=1e-2)


def test_d8_on_a_non_square_input_uses_the_four_flips():
    plain = Lopsided().eval()
    x = torch.rand(1, 3, 12, 16)
    with torch.no_grad():
        assert torch.allclose(tta.wrap(plain, "d8")(x), tta.wrap(plain, "flips")(x))
    assert tta.wrap(plain, "d8").views(x) == 4 and tta.wrap(plain, "d8").views(torch.rand(1, 3, 8, 8)) == 8


def test_wrapping_never_nests_and_the_weights_keep_their_names():
    plain = Lopsided()
    model = tta.wrap(tta.wrap(plain, "d8"), "flips")
    assert model.inner is plain and model.tta == "flips"
    assert tta.unwrap(model) is plain and tta.wrap(model, None) is plain
    assert list(model.state_dict()) == list(plain.state_dict())
    other = Lopsided()
    nn.init.zeros_(other.conv.weight)
    model.load_state_dict(other.state_dict())
    assert torch.equal(plain.conv.weight, other.conv.weight)
    with pytest.raises(ConfigError, match="model spec tta: unknown value 'd4'; choose one of none, flips, d8"):
        tta.wrap(plain, "d4")


def test_a_saved_model_loads_with_the_views_its_spec_names(tmp_path):
    spec = {**default_spec("classify", width=8, size=32), "tta": "d8"}
    torch.manual_seed(0)
    module = build_model(spec).eval()
    path = save_model(module, spec, tmp_path / "model")
    loaded = load_model(str(path))
    assert isinstance(loaded.module, tta.TestTimeAugmented) and loaded.module.tta == "d8"
    assert list(loaded.module.state_dict()) == list(module.state_dict())  # what packaging saves
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(module(tta._view(x, k)), 1) for k in range(8)]).mean(0)
        assert torch.allclose(torch.softmax(loaded.module(x), 1), expected, atol=1e-5)
    plain = load_model(str(save_model(module, {k: v for k, v in spec.items() if k != "tta"}, tmp_path / "plain")))
    assert not isinstance(plain.module, tta.TestTimeAugmented)
    bad = save_model(module, {**spec, "tta": "d4"}, tmp_path / "bad")  # a spec written elsewhere
    with pytest.raises(ConfigError, match="model spec tta: unknown value 'd4'"):
        load_model(str(bad))


def _png(w=40, h=40, seed=0) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_serving_answers_with_the_averaged_model_and_explains_with_one_view(tmp_path):
    """A MAR directory whose spec says d8: predictions are the averaged model's, Grad-CAM runs."""
    from fissure.serving.runtime import SPEC_FILE, WEIGHTS_FILE, ModelRuntime

    spec = {**default_spec("classify", width=8, size=32), "tta": "d8"}
    torch.manual_seed(0)
    module = build_model(spec).eval()
    torch.save(module.state_dict(), tmp_path / WEIGHTS_FILE)
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    runtime = ModelRuntime.from_dir(tmp_path)
    items = [runtime.prepare_image(_png(seed=s)) for s in range(3)]
    got = runtime.predict(items)
    x = torch.stack([p.tensor for p in items])
    with torch.no_grad():
        expected = torch.stack([torch.softmax(module(tta._view(x, k)), 1) for k in range(8)]).mean(0)
    for result, row in zip(got, expected):
        assert result["probabilities"]["crack"] == pytest.approx(float(row[1]), abs=1e-5)
    plain = ModelRuntime(module, {k: v for k, v in spec.items() if k != "tta"})
    assert [r["probabilities"] for r in plain.predict(items)] != [r["probabilities"] for r in got]
    explained = runtime.explain(items[:1])
    assert explained[0]["method"] == "grad-cam"
