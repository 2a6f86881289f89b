"""The files of a fissure model and its MLflow pyfunc loader: no pickle of code anywhere.

A fissure MLflow model is a ``python_function`` model whose ``loader_module`` is this module
and whose data directory holds two files:

- ``weights.pt``: the module's state dict (``torch.save``; tensors only, read back with
  ``torch.load(weights_only=True)``, which refuses anything else);
- ``spec.json``: the spec that rebuilds the architecture (:func:`fissure.models.build_model`).

MLflow calls :func:`_load_pyfunc` (``mlflow.pyfunc.load_model``, ``mlflow models serve``);
:func:`fissure.models.io.load_model` calls :func:`read` on the same directory.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fissure.errors import FissureError
from fissure.models import tta

WEIGHTS_FILE = "weights.pt"
SPEC_FILE = "spec.json"


def write(module: nn.Module, spec: dict, folder: str | Path) -> Path:
    """Write ``weights.pt`` and ``spec.json`` into ``folder`` (created); returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, folder / WEIGHTS_FILE)
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    return folder


def read(folder: str | Path, map_location: str = "cpu", where: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the module from ``folder`` (see :func:`write`): channels-last, eval(), on ``map_location``.

    ``where`` names the model in errors (default: the folder).
    """
    from fissure.models import build_model

    folder = Path(folder)
    where = where or str(folder)
    try:
        spec = json.loads((folder / SPEC_FILE).read_text())
        module = build_model(spec, pretrained=False)  # the state dict holds every weight
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except FileNotFoundError as exc:
        raise FissureError(f"{where}: incomplete fissure model, {Path(exc.filename).name} is missing") from None
    except json.JSONDecodeError as exc:
        raise FissureError(f"{where}: {SPEC_FILE} is not valid JSON ({exc})") from None
    except pickle.UnpicklingError:
        # weights_only=True refused an object that is not plain tensors (possibly code)
        raise FissureError(f"{where}: {WEIGHTS_FILE} is not a plain state dict; refusing to unpickle it") from None
    except (ValueError, TypeError, AttributeError, RuntimeError) as exc:
        # an unknown architecture, a malformed spec, or weights of another shape
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FissureError(f"{where}: weights and spec do not make a fissure model ({reason})") from None
    # build_model's layout, which load_state_dict keeps; the device is the caller's choice
    module = module.to(map_location).to(memory_format=torch.channels_last).eval()
    return tta.wrap(module, spec.get("tta")), spec


class FissurePyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: float32 NCHW batch in, the model's raw output out."""

    def __init__(self, module: nn.Module, spec: dict):
        self.module = module
        self.spec = spec

    def predict(self, model_input, params: dict | None = None) -> np.ndarray:
        # the same contract as mlflow.pytorch's pyfunc: preprocessed tensors, raw logits
        batch = torch.from_numpy(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.module(batch).numpy()

    def get_raw_model(self) -> nn.Module:
        return self.module


def _load_pyfunc(data_path: str) -> FissurePyfunc:
    """MLflow's loader_module entry point."""
    return FissurePyfunc(*read(data_path))
