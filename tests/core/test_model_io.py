"""fissure.models.io: a model artefact is a state dict + JSON spec in an MLflow pyfunc model.

Nothing in it is a pickled module, loading never unpickles code, and older pickled artefacts
are refused with one line.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fissure.errors import FissureError, NotFoundError
from fissure.models import build_model, default_spec
from fissure.models import io as model_io
from fissure.models.pyfunc import SPEC_FILE, WEIGHTS_FILE


class Booby(torch.nn.Module):
    """A module that leaves a marker file when it is unpickled (proof that code ran on load)."""

    def __init__(self, marker: Path):
        super().__init__()
        self.marker = str(marker)
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.conv(x)

    def __setstate__(self, state):
        Path(state["marker"]).touch()
        super().__setstate__(state)


def _spec_and_model(task: str):
    spec = default_spec(task, size=32, **({"width": 8} if task == "classify" else {"base": 4, "depth": 2}))
    torch.manual_seed(0)
    return spec, build_model(spec)


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_round_trip_gives_the_same_outputs_channels_last_and_eval(task, tmp_path):
    spec, model = _spec_and_model(task)
    path = model_io.save_model(model, spec, tmp_path / "m",
                               extra_metadata={"fissure_run_id": "r1", "fissure_registered": {"version": "7"}})
    loaded = model_io.load_model(str(path))
    assert loaded.spec == spec and loaded.task == task
    assert (loaded.run_id, loaded.version, loaded.name) == ("r1", "7", spec["name"])
    assert not loaded.module.training
    conv = next(m for m in loaded.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), loaded.module(x), atol=1e-6)


def test_artefact_holds_a_state_dict_and_the_spec_and_no_pickled_module(tmp_path):
    spec, model = _spec_and_model("classify")
    path = model_io.save_model(model, spec, tmp_path / "m")
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    assert set(mlmodel["flavors"]) == {"python_function"}  # no mlflow.pytorch (pickle) flavor
    conf = mlmodel["flavors"]["python_function"]
    assert conf["loader_module"] == "fissure.models.pyfunc" and not conf.get("code")
    assert mlmodel["metadata"][model_io.SPEC_KEY] == spec
    data = path / conf["data"]
    assert sorted(p.name for p in data.iterdir()) == sorted([WEIGHTS_FILE, SPEC_FILE])
    state = torch.load(data / WEIGHTS_FILE, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert state.keys() == model.state_dict().keys()
    assert not [p for p in path.rglob("*") if p.suffix in {".pkl", ".pickle", ".pth"}]


def test_pyfunc_predict_gives_the_model_logits(tmp_path):
    import mlflow

    spec, model = _spec_and_model("segment")
    path = model_io.save_model(model, spec, tmp_path / "m")
    pyfunc_model = mlflow.pyfunc.load_model(str(path))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(pyfunc_model.predict(x), expected, atol=1e-6)
    assert isinstance(pyfunc_model.get_raw_model(), type(model))


def test_old_pickled_model_is_refused_without_unpickling(tmp_path):
    import mlflow

    marker = tmp_path / "unpickled"
    spec = default_spec("classify", size=32, width=8)
    old = tmp_path / "old"
    mlflow.pytorch.save_model(Booby(marker), str(old), metadata={model_io.SPEC_KEY: spec},
                              serialization_format="pickle", pip_requirements=[])
    with pytest.raises(FissureError) as err:
        model_io.load_model(str(old))
    message = str(err.value)
    assert "old pickled format" in message and "retrain" in message and "\n" not in message
    assert not marker.exists()
    mlflow.pytorch.load_model(str(old))  # what fissure used to do: it runs the pickle's code
    assert marker.exists()


def test_weights_that_are_a_pickled_module_are_refused(tmp_path):
    spec, model = _spec_and_model("classify")
    path = model_io.save_model(model, spec, tmp_path / "m")
    marker = tmp_path / "unpickled"
    torch.save(Booby(marker), path / "data" / "fissure" / WEIGHTS_FILE)  # a tampered artefact
    with pytest.raises(FissureError, match="not a plain state dict"):
        model_io.load_model(str(path))
    assert not marker.exists()


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    spec, model = _spec_and_model("classify")
    path = model_io.save_model(model, spec, tmp_path / "m")
    other = default_spec("classify", size=32, width=16)
    (path / "data" / "fissure" / SPEC_FILE).write_text(json.dumps(other))
    with pytest.raises(FissureError, match="weights and spec do not make a fissure model"):
        model_io.load_model(str(path))


def test_data_path_outside_the_model_is_refused(tmp_path):
    spec, model = _spec_and_model("classify")
    path = model_io.save_model(model, spec, tmp_path / "m")
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["data"] = "../elsewhere"
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(FissureError, match="leaves the model directory"):
        model_io.load_model(str(path))


def test_logged_model_uri_from_log_model_loads(tmp_path):
    """log_model's own URI (MLflow 3: models:/m-<id>, not registered) loads, with its run."""
    spec, model = _spec_and_model("classify")
    mlflow = model_io._mlflow()
    with mlflow.start_run() as run:
        info = model_io.log_model(model, spec)
    loaded = model_io.load_model(info.model_uri)
    assert (loaded.run_id, loaded.version, loaded.name) == (run.info.run_id, None, spec["name"])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), loaded.module(x), atol=1e-6)


def test_load_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(NotFoundError, match="not found"):
        model_io.load_model(str(tmp_path / "nope"))
    with pytest.raises(NotFoundError):
        model_io.load_model("models:/crack-classifier@champion")
    with pytest.raises(NotFoundError):
        model_io.load_model("models:/m-" + "0" * 32)
