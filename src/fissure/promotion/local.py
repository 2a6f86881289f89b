"""The local stack's actuator: the front serves the challenger beside the champion and routes
the share itself (:mod:`fissure.serving.canary`).

The actuator packages a version's MAR under ``.fissure/serving/canary/``, writes the front's
routing file (atomically, under a lock) and waits until the front's OIP metadata shows the change:
``versions`` lists the champion then the challenger, ``parameters.canary_traffic_percent`` its
share. The routing file is the state: when the front is down, a rollback still leaves a file
that says "champion only", and `fissure up` starts without a canary.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from fissure.errors import FissureError, NotFoundError, Unavailable
from fissure.promotion.actuators import ModelRef, TrafficState
from fissure.serving.canary import Fault, Route, Routing, Served


class LocalActuator:
    name = "local"

    def __init__(self, inference_url: str, routing_path: Path, store: Path, fault: Fault | None = None,
                 timeout: float = 300.0, poll: float = 0.5):
        self.url = inference_url.rstrip("/")
        self.routing_path = Path(routing_path)
        self.store = Path(store)
        self.fault = fault
        self.timeout, self.poll = timeout, poll

    # ------------------------------------------------------------------ what the front serves
    def state(self, model: str) -> TrafficState:
        try:
            r = httpx.get(f"{self.url}/v2/models/{model}", timeout=10)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the serving front at {self.url} is unreachable: {exc}") from exc
        if r.status_code == 404:
            raise NotFoundError(f"model {model!r} is not served at {self.url}")
        if r.status_code != 200:
            raise Unavailable(f"the serving front at {self.url} answered {r.status_code} for model {model!r}")
        meta = r.json()
        versions = [str(v) for v in meta.get("versions") or []]
        params = meta.get("parameters") or {}
        return TrafficState(versions[0] if versions else None, versions[1] if len(versions) > 1 else None,
                            int(params.get("canary_traffic_percent") or 0) if len(versions) > 1 else 0)

    def _wait(self, model: str, done, what: str) -> TrafficState:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                st = self.state(model)
                if done(st):
                    return st
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise Unavailable(f"the front at {self.url} did not apply {what} within {self.timeout:.0f} s "
                                  f"(its log: .fissure/logs/stack.log)")
            time.sleep(self.poll)

    # ------------------------------------------------------------------ the routing file
    @contextmanager
    def _route(self, model: str):
        """Read-modify-write of one model's route, atomic, one writer at a time."""
        self.routing_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.routing_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                routing = Routing.read(self.routing_path)
            except ValueError as exc:
                raise FissureError(f"routing file {self.routing_path} is corrupt ({str(exc).splitlines()[0]}); "
                                   f"delete it to serve the champions only") from None
            route = routing.models.get(model) or Route()
            yield route
            routing.models[model] = route
            tmp = self.routing_path.with_suffix(".tmp")
            tmp.write_text(routing.model_dump_json(indent=2) + "\n")
            os.replace(tmp, self.routing_path)

    def _mar(self, ref: ModelRef) -> Path:
        from fissure.serving.package import package

        out = self.store / f"{ref.name}-v{ref.version}"
        mar = out / "model-store" / f"{ref.name}.mar"
        if not mar.exists():
            package(ref.uri, out, name=ref.name)
        return mar

    # ------------------------------------------------------------------ the Actuator protocol
    def prepare(self, champion: ModelRef, challenger: ModelRef) -> None:
        mar = self._mar(challenger)
        with self._route(challenger.name) as route:
            route.challenger = Served(version=challenger.version, mar=mar)
            route.percent = 0
            route.fault = self.fault
        self._wait(challenger.name, lambda st: st.challenger_version == challenger.version,
                   f"challenger version {challenger.version} of {challenger.name}")

    def set_weight(self, model: str, percent: int) -> None:
        with self._route(model) as route:
            if route.challenger is None:
                raise FissureError(f"no challenger of {model} is deployed; prepare one first")
            route.percent = int(percent)
            version = route.challenger.version
        self._wait(model, lambda st: st.challenger_version == version and st.challenger_percent == percent,
                   f"{percent}% to challenger version {version} of {model}")

    def promote(self, challenger: ModelRef) -> None:
        mar = self._mar(challenger)
        with self._route(challenger.name) as route:
            route.champion = Served(version=challenger.version, mar=mar)
            route.challenger, route.percent, route.fault = None, 0, None
        self._wait(challenger.name,
                   lambda st: st.champion_version == challenger.version and st.challenger_version is None,
                   f"version {challenger.version} of {challenger.name} as the only one served")

    def rollback(self, model: str) -> None:
        with self._route(model) as route:
            route.challenger, route.percent, route.fault = None, 0, None
        self._wait(model, lambda st: st.challenger_version is None, f"no challenger for {model}")
