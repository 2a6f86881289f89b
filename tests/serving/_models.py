"""Build two tiny fissure models, register them in a temp MLflow store and package both.

Run as a script (a subprocess of the test session, so MLflow state never leaks into other
tests): ``python tests/serving/_models.py OUT``. Env: MLFLOW_TRACKING_URI, FISSURE_HOME.
Prints one JSON line: {"classifier": {...}, "segmenter": {...}, "out": OUT}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fissure.models import build_model, default_spec
from fissure.models.io import _mlflow, log_model


def centre_segmenter(model, size):
    """Shift the head bias so about a tenth of pixels are 'crack' (random init gives all or nothing)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, size, size, generator=g)
    with torch.no_grad():
        logits = model.eval()(x)
        model.head.bias -= torch.quantile(logits.flatten(), 0.9)
    return model


def main(out: str) -> None:
    mlflow = _mlflow()
    mlflow.set_experiment("serving-tests")
    info = {}
    for key, task, params in (("classifier", "classify", {"width": 8}),
                              ("segmenter", "segment", {"base": 8, "depth": 2, "size": 64})):
        spec = default_spec(task, **params)
        torch.manual_seed(0)
        model = build_model(spec).eval()
        if task == "segment":
            centre_segmenter(model, 64)
        with mlflow.start_run() as run:
            log_model(model, spec, registered_model_name=spec["name"])
        client = mlflow.MlflowClient()
        mv = client.search_model_versions(f"name='{spec['name']}'", order_by=["version_number DESC"])[0]
        client.set_registered_model_alias(spec["name"], "champion", mv.version)
        info[key] = {"name": spec["name"], "version": str(mv.version), "run_id": run.info.run_id}

    from fissure.cli import main as cli

    for key in ("classifier", "segmenter"):
        code = cli(["package", "--model", f"models:/{info[key]['name']}@champion", "--out", out,
                    "--batch-size", "8", "--max-batch-delay", "50"])
        if code:
            sys.exit(code)
    print(json.dumps({**info, "out": str(Path(out).resolve())}))


if __name__ == "__main__":
    main(sys.argv[1])
