"""`fissure evaluate --native`: scoring at each image's own resolution with serving's tiling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fissure.cli import main
from fissure.models import build_model, default_spec
from fissure.models.io import save_model
from fissure.training.datasets import eval_items
from fissure.training.evaluate import evaluate_items

from .conftest import write_segment_set


class DarkPixels(nn.Module):
    """Pointwise: dark pixels are cracks. Exact at any resolution; blind to lines a resize blurs."""

    def forward(self, x):
        return -x.mean(1, keepdim=True) * 10 - 5


def _thin_cracks(root: Path, n=3, h=211, w=317) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((h, w, 3), 200, np.uint8)
        mask = np.zeros((h, w), bool)
        for x in rng.integers(5, w - 5, 3):
            mask[:, x] = True  # one pixel wide
        img[mask] = 40
        Image.fromarray(img).save(root / "images" / f"t{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"t{i}.png")
    return root


def test_native_scores_thin_cracks_a_resize_loses(tmp_path):
    spec = default_spec("segment", size=64)
    items, _ = eval_items("segment", _thin_cracks(tmp_path / "d"))
    native = evaluate_items(DarkPixels(), spec, items, overlays=0, native=True, batch_size=4).metrics
    resized = evaluate_items(DarkPixels(), spec, items, overlays=0).metrics
    assert native["dice"] == pytest.approx(1.0)
    assert resized["dice"] < 0.6
    spec["tiling"] = {"mode": "tile", "overlap": 8}  # the spec alone turns it on
    assert evaluate_items(DarkPixels(), spec, items, overlays=0).metrics == native
    assert evaluate_items(DarkPixels(), spec, items, overlays=0, native=False).metrics == resized


def test_evaluate_cli_native(tmp_path, capsys):
    data = write_segment_set(tmp_path / "seg", 4, size=96)
    spec = default_spec("segment", base=8, depth=2, size=64)
    model = str(save_model(build_model(spec), spec, tmp_path / "model"))  # untrained: the scores don't matter
    out = tmp_path / "native.json"
    rc = main(["evaluate", "--task", "segment", "--model", model, "--data", str(data),
               "--out", str(out), "--native"])
    report = json.loads(out.read_text())
    assert rc == 0 and report["resolution"] == "native" and report["tiling"]["tile"] > 0
    assert 0 <= report["dice"] <= 1
    assert "(native)" in capsys.readouterr().err
    rc = main(["evaluate", "--task", "segment", "--model", model, "--data", str(data), "--out", str(out)])
    assert rc == 0 and json.loads(out.read_text())["resolution"] == "resized"
    capsys.readouterr()
    rc = main(["evaluate", "--task", "classify", "--model", model, "--data", str(data), "--out", str(out), "--native"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("fissure: error: --native applies to --task segment") and len(err.splitlines()) == 1


def test_evaluate_cli_native_says_how_many_images_it_downscaled(tmp_path, capsys):
    """Images over the spec's tiling budget are scored downscaled, as served: the report and the
    summary line count them; none under the budget."""
    data = write_segment_set(tmp_path / "seg", 4, size=96)
    for max_pixels, expected in ((96 * 96 - 1, 4), (96 * 96, 0)):
        spec = {**default_spec("segment", base=8, depth=2, size=64),
                "tiling": {"mode": "tile", "overlap": 8, "max_pixels": max_pixels}}
        model = str(save_model(build_model(spec), spec, tmp_path / f"model-{max_pixels}"))
        out = tmp_path / f"{max_pixels}.json"
        rc = main(["evaluate", "--task", "segment", "--model", model, "--data", str(data), "--out", str(out)])
        report, err = json.loads(out.read_text()), capsys.readouterr().err
        assert rc == 0 and report["tiling"]["downscaled_images"] == expected
        assert ("4 downscaled to the" in err) == bool(expected), err


def test_evaluate_cli_tta_overrides_the_spec(tmp_path, capsys):
    """--tta scores the model with the views asked for, whatever its spec says, and the report
    and the summary line say which."""
    data = write_segment_set(tmp_path / "seg", 4, size=96)
    spec = {**default_spec("segment", base=8, depth=2, size=64), "tta": "d8"}
    module = build_model(spec)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # wild weights: an untrained model answers ~0.5 everywhere, whatever the view
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model = str(save_model(module, spec, tmp_path / "model"))
    reports = {}
    for tta in (None, "none", "flips"):
        out = tmp_path / f"{tta}.json"
        rc = main(["evaluate", "--task", "segment", "--model", model, "--data", str(data), "--out", str(out)]
                  + (["--tta", tta] if tta else []))
        assert rc == 0
        reports[tta] = json.loads(out.read_text())
        err = capsys.readouterr().err
        assert (f"(tta {reports[tta]['tta']})" in err) == (reports[tta]["tta"] != "none")
    assert [reports[t]["tta"] for t in reports] == ["d8", "none", "flips"]
    sweeps = [(reports[t]["threshold_sweep"]["best_threshold"], reports[t]["threshold_sweep"]["best_dice"]) for t in reports]
    assert len(set(sweeps)) == 3  # three different models
    rc = main(["evaluate", "--task", "segment", "--model", model, "--data", str(data), "--out", str(out), "--tta", "d4"])
    err = capsys.readouterr().err
    assert rc == 2 and "'d4' is not one of 'none', 'flips', 'd8'" in err


def test_evaluate_cli_threshold_overrides_the_spec(tmp_path, capsys):
    """--threshold and --threshold-low score the masks drawn that way instead of the spec's; the
    report's sweep and the summary line say which; a bad value or a classifier is a one-line
    usage error."""
    import csv

    data = write_segment_set(tmp_path / "seg", 4, size=96)
    spec = {**default_spec("segment", base=8, depth=2, size=64), "threshold": 0.5, "threshold_low": 0.3}
    module = build_model(spec)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # wild weights: probabilities spread over (0, 1)
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model = str(save_model(module, spec, tmp_path / "model"))

    def run(*extra):
        out = tmp_path / "r.json"
        rc = main(["evaluate", "--task", "segment", "--model", model, "--data", str(data), "--out", str(out),
                   "--plots", str(tmp_path / "plots"), "--overlays", "0", *extra])
        return rc, json.loads(out.read_text()), capsys.readouterr().err

    rc, spec_masks, err = run()
    assert rc == 0 and spec_masks["threshold_sweep"]["threshold_low"] == 0.3
    assert "(threshold 0.5, hysteresis from 0.3)" in err
    rc, plain, err = run("--threshold-low", "none")
    assert rc == 0 and "threshold_low" not in plain["threshold_sweep"] and "(threshold 0.5)" in err
    rows = {float(r["threshold"]): float(r["dice"]) for r in csv.DictReader(open(tmp_path / "plots" / "threshold_sweep.csv"))}
    rc, other, err = run("--threshold", "0.4", "--threshold-low", "none")
    assert rc == 0 and other["threshold_sweep"]["threshold"] == 0.4 and "(threshold 0.4)" in err
    assert other["dice"] == pytest.approx(rows[0.4], abs=2e-6)  # the plain sweep's point at 0.4 (JSON: 6 digits)
    assert spec_masks["dice"] != plain["dice"] != other["dice"]
    for bad, says in ((["--threshold-low", "1.5"], "1.5 is not in the range 0<x<1"),
                      (["--threshold-low", "off"], "'off' is not a number or none"),
                      (["--threshold", "0"], "--threshold")):
        rc = main(["evaluate", "--task", "segment", "--model", model, "--data", str(data), "--out", "x.json", *bad])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and says in err and "Traceback" not in err
    rc = main(["evaluate", "--task", "classify", "--model", model, "--data", str(data), "--out", "x.json",
               "--threshold", "0.4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("fissure: error: --threshold and --threshold-low apply to --task segment")
