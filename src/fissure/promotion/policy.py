"""The promotion policies from params.yaml: ``gate:`` (:class:`~fissure.promotion.gate.GatePolicy`)
and ``canary:`` (:class:`~fissure.promotion.controller.CanaryPolicy`). Neither is a DVC stage's
parameter: changing them re-runs no training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from fissure.errors import UsageError
from fissure.promotion.controller import CanaryPolicy
from fissure.promotion.gate import GatePolicy

# where the gate's sets are, per task, relative to the repository (docs/retraining.md)
GATE_DATA = {"classify": "data/prepared/classify/test", "segment": "data/prepared/segment/test"}
FEEDBACK_DATA = {"classify": "data/feedback/images", "segment": "data/feedback"}


@dataclass
class Policies:
    gate: GatePolicy
    canary: CanaryPolicy


def read(path: str | Path | None) -> Policies:
    """The ``gate:`` and ``canary:`` sections of ``path`` (defaults for missing ones; a missing
    file gives all defaults only when no path was asked for)."""
    doc = {}
    if path is not None:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise UsageError(f"params file {path} not found") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    out = {}
    for key, cls in (("gate", GatePolicy), ("canary", CanaryPolicy)):
        try:
            out[key] = cls.model_validate(doc.get(key) or {})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in (key, *err.get("loc", ())))
            raise UsageError(f"{path}: {where}: {err['msg']}") from None
    return Policies(**out)
