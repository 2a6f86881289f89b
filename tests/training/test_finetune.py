"""init: champion fine-tunes from the registered champion's weights; lineage tags say what a
version was trained from (a real, per-test MLflow store)."""

from __future__ import annotations

import mlflow
import pytest
import torch

from fissure.errors import FissureError
from fissure.training.run import train

from .conftest import tiny_config

pytestmark = pytest.mark.slow
CLF = "crack-classifier"


def _client() -> mlflow.MlflowClient:
    uri = mlflow.get_tracking_uri()
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_init_champion_starts_from_the_champions_weights_and_says_so(clf_data):
    first = train("classify", clf_data, tiny_config("classify", epochs=2), register=True, progress=False,
                  echo=lambda *_: None, overlays=0)
    assert first.registered["version"] == "1" and "champion" in first.registered["aliases"]
    tags = _client().get_model_version(CLF, "1").tags
    assert tags["parent.champion"] == "none" and tags["init"] == "scratch" and tags["git.commit"]

    # lr 0 with no weight decay: fine-tuning keeps the champion's weights exactly, scratch does not
    lines: list[str] = []
    tuned = train("classify", clf_data, tiny_config("classify", epochs=1, lr=1e-12, weight_decay=0.0, init="champion"),
                  register=True, progress=False, echo=lines.append, overlays=0)
    assert any("fine-tuning from crack-classifier v1" in line for line in lines), lines
    tags = _client().get_model_version(CLF, tuned.registered["version"]).tags
    assert tags["init"] == "champion:v1" and tags["parent.champion"] == "1"

    from fissure.models import io

    champion = io.load_model(f"models:/{CLF}/1").module.state_dict()
    child = io.load_model(f"models:/{CLF}/{tuned.registered['version']}").module.state_dict()
    conv = next(k for k, v in champion.items() if v.dim() == 4)
    assert torch.allclose(champion[conv], child[conv], atol=1e-6)

    scratch = train("classify", clf_data, tiny_config("classify", epochs=1, lr=1e-12, weight_decay=0.0, seed=7),
                    register=True, progress=False, echo=lambda *_: None, overlays=0)
    other = io.load_model(f"models:/{CLF}/{scratch.registered['version']}").module.state_dict()
    assert not torch.allclose(champion[conv], other[conv], atol=1e-3)


def test_init_champion_with_another_architecture_is_one_line(clf_data):
    train("classify", clf_data, tiny_config("classify", epochs=1), register=True, progress=False,
          echo=lambda *_: None, overlays=0)
    wider = tiny_config("classify", epochs=1, init="champion", model={"width": 16, "blocks": 1, "dropout": 0.0})
    with pytest.raises(FissureError, match="architecture differs.*set init: scratch"):
        train("classify", clf_data, wider, register=True, progress=False, echo=lambda *_: None, overlays=0)
