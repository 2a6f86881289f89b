"""The promotion controller: one canary procedure for every platform (``fissure promote``).

::

    champion, challenger <- MLflow aliases (the challenger must have passed the gate)
    a canary left in flight by an earlier run? roll it back first (re-runs start clean)
    actuator.prepare: challenger deployed beside the champion, 0 %
    for each step (e.g. 10 %, 50 %):
        actuator.set_weight(step); every poll: analysis over the time since the step began
          fail                      -> roll back at once
          pass, after the bake time -> next step
          insufficient traffic past max_wait -> roll back (a quiet period never passes a step)
    actuator.promote (100 %, old version retired), then MLflow's champion alias moves

Every outcome is recorded: MLflow tags on the challenger's version (``promotion``,
``promotion.reason``, ``promotion.by``, ``promotion.at``) and its run (``canary_steps.json``),
and pipeline events in the feedback API (its history and metrics) when one is configured.

When anything it depends on fails (MLflow, Prometheus, the object store, the platform's API) the
controller rolls back what it deployed, so the champion serves 100 %, and stops with one line
saying what it left; when even the rollback fails it says which command finishes it
(``fissure promote --abort``).
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fissure.errors import FissureError, NotFoundError, Unavailable
from fissure.promotion.analysis import StepPolicy, StepResult, analyse
from fissure.promotion.actuators import Actuator, ModelRef
from fissure.promotion.gate import TAG as GATE_TAG

log = logging.getLogger("fissure.promote")
CHAMPION, CHALLENGER = "champion", "challenger"
STEPS_ARTIFACT = "canary_steps.json"


class CanaryPolicy(BaseModel):
    """How a challenger earns live traffic; ``canary:`` in params.yaml."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field([10, 50], description="challenger's share at each step, percent; then promotion (100)")
    bake_seconds: float = Field(120.0, gt=0, description="minimum time at each step before it can pass")
    poll_seconds: float = Field(15.0, gt=0, description="how often the evidence is checked during a step")
    max_wait_seconds: float = Field(1800.0, gt=0, description="a step without enough traffic by then rolls back")
    analysis: StepPolicy = Field(default_factory=StepPolicy)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        v = [s for s in v if s != 100]  # 100 % is the promotion itself: no champion left to compare with
        if not v or any(not 0 < s < 100 for s in v) or v != sorted(set(v)):
            raise ValueError("steps must be increasing percentages between 1 and 99 (100 is the promotion)")
        return v


@dataclass
class Outcome:
    model: str
    champion_version: str
    challenger_version: str
    result: str  # promoted | rolled_back
    reason: str
    steps: list[dict] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.result == "promoted"

    def to_dict(self) -> dict:
        return {"model": self.model, "champion_version": self.champion_version,
                "challenger_version": self.challenger_version, "result": self.result,
                "reason": self.reason, "steps": self.steps}


def who() -> str:
    """Who acts: the Argo workflow when in one, else user@host."""
    wf = os.environ.get("ARGO_WORKFLOW_NAME") or os.environ.get("FISSURE_ACTOR")
    if wf:
        return wf
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Registry:
    """The MLflow calls the controller makes, with MLflow's failures as :class:`Unavailable`."""

    def __init__(self, client=None, storage_root: str | None = None):
        if client is None:
            from fissure.training.tracking import mlflow_client

            # fail in seconds, not after MLflow's minutes of retries, when the server is gone
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            client = mlflow_client().MlflowClient()
        self.client = client
        self.storage_root = storage_root.rstrip("/") if storage_root else None

    def _call(self, what: str, fn, *args, **kw):
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kw)
        except MlflowException as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in msg.lower():
                raise NotFoundError(f"{what}: {msg}") from None
            raise Unavailable(f"MLflow failed to {what}: {msg}") from None
        except OSError as exc:
            raise Unavailable(f"MLflow unreachable ({what}): {exc}") from None

    def ref(self, name: str, alias: str | None = None, version: str | None = None) -> ModelRef:
        if version is not None:
            mv = self._call(f"find {name} version {version}", self.client.get_model_version, name, str(version))
        else:
            mv = self._call(f"find {name}@{alias}", self.client.get_model_version_by_alias, name, alias)
        v = str(mv.version)
        return ModelRef(name, v, mv.run_id, f"{self.storage_root}/{name}/{v}" if self.storage_root else None)

    def tags(self, ref: ModelRef) -> dict[str, str]:
        mv = self._call(f"read {ref.name} version {ref.version}", self.client.get_model_version, ref.name, ref.version)
        return dict(mv.tags or {})

    def tag(self, ref: ModelRef, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call(f"tag {ref.name} version {ref.version}", self.client.set_model_version_tag,
                       ref.name, ref.version, k, str(v)[:5000])

    def log_steps(self, ref: ModelRef, outcome: Outcome) -> None:
        if ref.run_id:
            self._call(f"log {STEPS_ARTIFACT}", self.client.log_dict, ref.run_id, outcome.to_dict(), STEPS_ARTIFACT)

    def move_champion(self, challenger: ModelRef) -> None:
        self._call(f"move {challenger.name}@{CHAMPION}", self.client.set_registered_model_alias,
                   challenger.name, CHAMPION, challenger.version)
        try:
            self._call(f"clear {challenger.name}@{CHALLENGER}", self.client.delete_registered_model_alias,
                       challenger.name, CHALLENGER)
        except (NotFoundError, Unavailable) as exc:  # the champion moved: a stale challenger alias is harmless
            log.warning("%s", exc)


class Events:
    """Pipeline events to the feedback API (``POST /pipeline/events``); a no-op without a URL.
    Failures are reported, not raised: MLflow's tags are the record the controller relies on."""

    def __init__(self, api_url: str | None, token: str | None, echo: Callable[[str], object] = print):
        self.url = api_url.rstrip("/") if api_url else None
        self.token = token
        self.echo = echo

    def send(self, **event) -> None:
        if not self.url:
            return
        if not self.token:  # the API refuses unauthenticated writes: say so once, not per event
            self.echo(f"note: FISSURE_API_TOKEN (a pipeline token) is not set: events are not recorded in the API "
                      f"at {self.url}")
            self.url = None
            return
        import httpx

        try:
            r = httpx.post(f"{self.url}/pipeline/events", json=event, timeout=10,
                           headers={"Authorization": f"Bearer {self.token}"} if self.token else {})
            if r.status_code >= 300:
                self.echo(f"warning: the API refused the {event['kind']} event ({r.status_code}): {r.text[:200]}")
        except httpx.HTTPError as exc:
            self.echo(f"warning: the API at {self.url} is unreachable; {event['kind']} event not recorded there: {exc}")


class Controller:
    def __init__(self, actuator: Actuator, prometheus_url: str, policy: CanaryPolicy, registry: Registry,
                 events: Events | None = None, namespace: str = ".*", echo: Callable[[str], object] = print,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                 require_gate: bool = True):
        self.actuator = actuator
        self.prometheus_url = prometheus_url
        self.policy = policy
        self.registry = registry
        self.events = events or Events(None, None)
        self.namespace = namespace
        self.echo = echo
        self.sleep, self.clock = sleep, clock
        self.require_gate = require_gate
        self.by = who()

    # ------------------------------------------------------------------ the canary
    def run(self, model: str, challenger_version: str | None = None) -> Outcome:
        champion = self.registry.ref(model, CHAMPION)
        challenger = (self.registry.ref(model, version=challenger_version) if challenger_version
                      else self.registry.ref(model, CHALLENGER))
        if challenger.version == champion.version:
            raise FissureError(f"{model} version {challenger.version} is already the champion")
        if self.require_gate:
            verdict = self.registry.tags(challenger).get(GATE_TAG)
            if verdict != "passed":
                raise FissureError(f"{model} version {challenger.version} has not passed the offline gate "
                                   f"(tag {GATE_TAG}={verdict or 'unset'}); run `fissure gate --model {model}` first")
        self.echo(f">> canary of {model}: champion v{champion.version}, challenger v{challenger.version} "
                  f"on {self.actuator.name}; steps {self.policy.steps} %, bake {self.policy.bake_seconds:g} s each")
        outcome = Outcome(model, champion.version, challenger.version, "rolled_back", "")
        deployed = False
        try:
            leftover = self.actuator.state(model)
            if leftover.challenger_version is not None:
                self.echo(f">> a canary left in flight (v{leftover.challenger_version} at "
                          f"{leftover.challenger_percent}%): rolling it back first")
                self.actuator.rollback(model)
            deployed = True
            self.actuator.prepare(champion, challenger)
            for percent in self.policy.steps:
                result = self._step(model, champion, challenger, percent)
                outcome.steps.append({"percent": percent, "verdict": result.verdict,
                                      "checks": [c.model_dump() for c in result.checks]})
                self.events.send(kind="canary", model=model, version=challenger.version, weight=float(percent),
                                 result="passed" if result.verdict == "pass" else "failed",
                                 details={"verdict": result.verdict, "window": result.window,
                                          "checks": {c.name: c.value for c in result.checks}})
                if result.verdict != "pass":
                    failed = [f"{c.name} ({c.detail})" for c in result.checks if c.passed is False]
                    outcome.reason = (f"step {percent}%: " + ("; ".join(failed) if result.verdict == "fail"
                                      else f"insufficient traffic within {self.policy.max_wait_seconds:g} s "
                                           f"({result.check('traffic').detail})"))
                    return self._rolled_back(champion, challenger, outcome)
            self.actuator.promote(challenger)
            try:
                self.registry.move_champion(challenger)
            except FissureError:
                # serving moved but the registry did not: put the champion back, so both agree
                self.actuator.promote(champion)
                raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                exc = FissureError("interrupted")
            if not deployed:
                raise
            self._stop(model, champion, challenger, exc)
            raise
        outcome.result = "promoted"
        outcome.reason = f"passed {len(self.policy.steps)} canary steps ({', '.join(f'{s}%' for s in self.policy.steps)})"
        self._record(champion, challenger, outcome)
        self.events.send(kind="promotion", model=model, to_version=challenger.version,
                         from_version=champion.version, who=self.by, why=outcome.reason[:4000],
                         details={"steps": len(outcome.steps), "actuator": self.actuator.name})
        self.echo(f">> promoted {model} v{challenger.version} to champion ({outcome.reason}); "
                  f"v{champion.version} retired")
        return outcome

    def _step(self, model: str, champion: ModelRef, challenger: ModelRef, percent: int) -> StepResult:
        p = self.policy
        self.actuator.set_weight(model, percent)
        start = self.clock()
        self.echo(f">> step {percent}%: baking {p.bake_seconds:g} s (evidence every {p.poll_seconds:g} s)")
        while True:
            self.sleep(p.poll_seconds)
            now = self.clock()
            elapsed = now - start
            window = f"{max(int(elapsed), 1)}s"  # only this step's requests
            result = analyse(self.prometheus_url, model, champion.version, challenger.version,
                                      window=window, policy=p.analysis, namespace=self.namespace, at=now)
            line = ", ".join(f"{c.name}={'-' if c.value is None else f'{c.value:.4g}'}"
                             f"{'' if c.passed is not False else ' FAIL'}" for c in result.checks)
            self.echo(f"   {elapsed:5.0f} s  {result.verdict:<12} {line}")
            if result.verdict == "fail":
                return result
            if result.verdict == "pass" and elapsed >= p.bake_seconds:
                return result
            if elapsed >= p.max_wait_seconds:
                return result  # still insufficient

    def _rolled_back(self, champion: ModelRef, challenger: ModelRef, outcome: Outcome) -> Outcome:
        self.actuator.rollback(champion.name)
        self._record(champion, challenger, outcome)
        self.events.send(kind="rollback", model=champion.name, to_version=champion.version,
                         from_version=challenger.version, who=self.by, why=outcome.reason[:4000],
                         details={"steps": len(outcome.steps), "actuator": self.actuator.name})
        self.echo(f">> rolled back {champion.name} v{challenger.version}: {outcome.reason}; "
                  f"champion v{champion.version} serves 100%")
        return outcome

    def _record(self, champion: ModelRef, challenger: ModelRef, outcome: Outcome) -> None:
        self.registry.tag(challenger, {"promotion": outcome.result, "promotion.reason": outcome.reason,
                                       "promotion.by": self.by, "promotion.actuator": self.actuator.name,
                                       "promotion.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       "promotion.previous_champion": champion.version})
        self.registry.log_steps(challenger, outcome)

    def _stop(self, model: str, champion: ModelRef, challenger: ModelRef, exc: BaseException) -> None:
        """After a failure mid-canary: champion at 100 %, and say so (or say what is left)."""
        why = str(exc) or type(exc).__name__
        try:
            self.actuator.rollback(model)
        except Exception as again:  # noqa: BLE001 - reported, the original error is raised
            self.echo(f">> STOPPED: {why}. The rollback failed too ({again}): challenger v{challenger.version} "
                      f"may still get traffic; run `fissure promote --model {model} --abort` when it is reachable")
            return
        self.echo(f">> STOPPED: {why}. Rolled back: champion v{champion.version} serves 100%, "
                  f"challenger v{challenger.version} removed; MLflow aliases unchanged. Re-run to try again.")
        try:
            self.registry.tag(challenger, {"promotion": "stopped", "promotion.reason": why[:4000],
                                           "promotion.by": self.by})
        except FissureError:
            pass  # MLflow may be what failed
        self.events.send(kind="rollback", model=model, to_version=champion.version, from_version=challenger.version,
                         who=self.by, why=f"stopped: {why}"[:4000], details={"actuator": self.actuator.name})

    # ------------------------------------------------------------------ --abort
    def abort(self, model: str) -> str:
        """Roll back whatever canary is in flight (the workflow's exit handler)."""
        st = self.actuator.state(model)
        self.actuator.rollback(model)
        if st.challenger_version is None:
            return f"no canary of {model} in flight; champion v{st.champion_version} serves 100%"
        try:
            self.registry.tag(ModelRef(model, st.challenger_version), {"promotion": "aborted",
                                                                        "promotion.by": self.by})
        except FissureError as exc:
            self.echo(f"warning: {exc}")
        self.events.send(kind="rollback", model=model, to_version=st.champion_version or "unknown",
                         from_version=st.challenger_version, who=self.by, why="aborted",
                         details={"actuator": self.actuator.name})
        return (f"rolled back challenger v{st.challenger_version} of {model} (it had {st.challenger_percent}%); "
                f"champion v{st.champion_version} serves 100%")
