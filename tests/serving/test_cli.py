"""CLI: `fissure package` errors, `fissure predict` against the fixture server (v1, v2, gRPC)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fissure.cli import cli

FISSURE = str(Path(sys.executable).with_name("fissure"))


@pytest.mark.parametrize("uri", ["models:/no-such-model/1", "/no/such/folder"])
def test_package_bad_uri_is_one_line_and_non_zero(tmp_path, uri):
    r = subprocess.run([FISSURE, "package", "--model", uri, "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip() and "WARNING" not in line]
    assert len(lines) == 1 and lines[0].startswith("fissure: error:"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "model-store").exists() or not any((tmp_path / "out" / "model-store").iterdir())


def test_packaged_layout(server):
    from fissure.serving.package import read_mar, read_snapshot

    store = server.out / "model-store"
    assert sorted(p.name for p in store.glob("*.mar")) == ["crack-classifier.mar", "crack-segmenter.mar"]
    mar = read_mar(store / "crack-segmenter.mar")
    assert mar["meta"]["run_id"] == server.models["segmenter"]["run_id"]
    assert mar["spec"]["task"] == "segment"
    snap = read_snapshot(server.out / "config" / "config.properties")
    assert set(snap) == {"crack-classifier", "crack-segmenter"}  # the second call merged
    entry = snap["crack-classifier"][server.models["classifier"]["version"]]
    assert (entry["batchSize"], entry["maxBatchDelay"], entry["minWorkers"]) == (8, 50, 1)


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc"])
def test_predict_cli_classifier(server, tmp_path, images, protocol):
    img = tmp_path / "img.png"
    img.write_bytes(images.png(seed=3))
    r = CliRunner().invoke(cli, ["predict", str(img), "--model", "crack-classifier", "--url", server.url,
                                 "--grpc-url", server.grpc, "--protocol", protocol])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("crack-classifier v1: ")
    assert "probabilities: " in r.output and ("no_crack" in r.output)


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc"])
def test_predict_cli_segmenter_saves_mask_and_overlay(server, tmp_path, images, protocol):
    from PIL import Image

    img = tmp_path / "img.png"
    img.write_bytes(images.png(seed=4, w=80, h=48))
    mask, over = tmp_path / "mask.png", tmp_path / "overlay.png"
    r = CliRunner().invoke(cli, ["predict", str(img), "--model", "crack-segmenter", "--url", server.url,
                                 "--grpc-url", server.grpc, "--protocol", protocol,
                                 "--save-mask", str(mask), "--save-overlay", str(over)])
    assert r.exit_code == 0, r.output
    assert "crack area" in r.output and "of 80x48" in r.output
    assert Image.open(mask).size == (80, 48) and Image.open(over).size == (80, 48)


def test_predict_cli_json_all_models_and_explain(server, tmp_path, images):
    img = tmp_path / "img.png"
    img.write_bytes(images.png(seed=5))
    r = CliRunner().invoke(cli, ["predict", str(img), "--url", server.url, "--json"])
    assert r.exit_code == 0, r.output
    results = json.loads(r.output)
    assert {x["model_name"] for x in results} == {"crack-classifier", "crack-segmenter"}
    r = CliRunner().invoke(cli, ["predict", str(img), "--url", server.url, "--model", "crack-classifier",
                                 "--explain", "--protocol", "v1"])
    assert r.exit_code == 0, r.output
    assert "grad-cam" in r.output


def test_predict_cli_server_error_is_one_line(server, tmp_path):
    from fissure.cli import main

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    code = main(["predict", str(bad), "--url", server.url, "--model", "crack-classifier"])
    assert code != 0


def test_predict_cli_grpc_with_authority(server, tmp_path, images):
    """--grpc-authority (for gateways routing by host) sets the channel's authority; the server answers."""
    img = tmp_path / "img.png"
    img.write_bytes(images.png(seed=6))
    r = CliRunner().invoke(cli, ["predict", str(img), "--model", "crack-segmenter", "--protocol", "grpc",
                                 "--grpc-url", server.grpc, "--grpc-authority", "crack-segmenter.grpc.example.com",
                                 "--url", server.url])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("crack-segmenter v")
