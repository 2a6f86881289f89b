"""What the promotion controller asks of a serving platform: move live traffic of one model
between its champion and its challenger.

One controller (:mod:`fissure.promotion.controller`) drives every platform through this
interface; the actuators differ only in how a share of traffic reaches the challenger:

- ``local``: the embedded stack's front serves both versions and routes the share itself
  (:mod:`fissure.promotion.local`);
- ``kserve-knative``: KServe's ``spec.predictor.canaryTrafficPercent`` (Serverless mode);
- ``kserve-gateway``: KServe Standard mode (the chart's default) with a weighted Gateway API
  HTTPRoute of the chart's own over the champion's and the challenger's Services
  (:mod:`fissure.promotion.kubernetes`).

Every method is idempotent and returns only once the platform applied the change (or raises
:class:`fissure.errors.Unavailable` / :class:`fissure.errors.FissureError`), so the controller
can re-run after any failure: ``rollback`` must succeed when nothing was deployed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ModelRef:
    """One registered model version."""

    name: str  # registered (and served) model name, e.g. crack-classifier
    version: str  # MLflow model version
    run_id: str | None = None
    # where the version's packaged model lives for a cluster (KServe storageUri, the folder with
    # config/ and model-store/); None for the local stack, which packages from MLflow itself
    storage_uri: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class TrafficState:
    """What a platform serves for one model right now."""

    champion_version: str | None
    challenger_version: str | None  # None: no challenger deployed
    challenger_percent: int  # share of requests the challenger gets, 0..100


@runtime_checkable
class Actuator(Protocol):
    name: str

    def state(self, model: str) -> TrafficState:
        """What is deployed and how traffic is split now."""

    def prepare(self, champion: ModelRef, challenger: ModelRef) -> None:
        """Deploy ``challenger`` beside ``champion`` with 0 % of traffic; return when it is ready."""

    def set_weight(self, model: str, percent: int) -> None:
        """Send ``percent`` % of the model's requests to the challenger; return once applied."""

    def promote(self, challenger: ModelRef) -> None:
        """Serve ``challenger`` as the model's only version (100 %) and retire the old one."""

    def rollback(self, model: str) -> None:
        """Champion at 100 %, challenger removed. Safe to call in any state, also repeatedly."""
