"""``fissure retrain``, ``fissure gate``, ``fissure promote``: new data -> challenger -> offline
gate -> canary -> champion (docs/retraining.md).

Exit codes: 0 done (gate passed, promoted, or nothing to do), 3 a decision against the challenger
(gate refused, canary rolled back), 1 a failure (the champion is left serving 100 %), 2 usage.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from fissure import MODEL_NAMES

REFUSED = 3
# these commands fail in seconds, not after minutes of MLflow's HTTP retries, when a server is gone
# (the controller then stops in a known state); dvc's training stages inherit it
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


class Duration(click.ParamType):
    """Seconds, or a number with s, m or h (as Argo and Prometheus write them): 90, 90s, 5m, 1h."""

    name = "duration"
    UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        import re

        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*", str(value))
        if not m or float(m.group(1)) <= 0:
            self.fail(f"{value!r} is not a duration (e.g. 90, 90s, 5m, 1h)", param, ctx)
        return float(m.group(1)) * self.UNITS[m.group(2)]
ACTUATORS = ("local", "kserve-gateway", "kserve-knative")
MODELS = click.Choice(sorted(MODEL_NAMES.values()))


def _root() -> Path:
    from fissure.stack import repo_root

    return repo_root()


def _params_option(f):
    return click.option("--params", "params", type=click.Path(path_type=Path, dir_okay=False), default=None,
                        help="params.yaml with the gate: and canary: policies [default: the repository's].")(f)


def _policies(params: Path | None):
    from fissure.promotion import policy

    if params is None:
        found = _root() / "params.yaml"
        params = found if found.exists() else None
    return policy.read(params)


def _write(out: Path | None, doc: dict) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def _events(echo):
    from fissure.promotion.controller import Events

    return Events(os.environ.get("FISSURE_API_URL") or _stack_url("api_url"), os.environ.get("FISSURE_API_TOKEN"),
                  echo)


def _stack_url(key: str) -> str | None:
    from fissure.stack import stack_urls

    return stack_urls().get(key)


def _gate_event(decision, echo) -> None:
    if decision.challenger_version:
        _events(echo).send(kind="gate", model=decision.model, version=str(decision.challenger_version),
                           result="passed" if decision.passed else "failed",
                           details={c.name: c.value for c in decision.checks})


@click.command("gate")
@click.option("--model", required=True, type=MODELS, help="Registered model to judge.")
@click.option("--challenger", "version", default=None, help="Version to judge [default: the challenger alias].")
@click.option("--gate-data", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Fixed gate set [default: data/prepared/<task>/test].")
@click.option("--feedback-data", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="New feedback items [default: data/feedback (images/ for the classifier)].")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the decision as JSON here (the workflow's output).")
@_params_option
def gate(model, version, gate_data, feedback_data, out, params):
    """Judge a challenger offline against the champion; exit 3 when it is refused."""
    from fissure.promotion.retrain import gate as run

    decision = run(model, version, _policies(params).gate, _root(), gate_data, feedback_data, echo=click.echo)
    _write(out, decision.to_dict())
    _gate_event(decision, click.echo)
    if not decision.passed:
        sys.exit(REFUSED)


def _actuator(kind: str, namespace: str | None, release: str | None, fault: tuple[float, float]):
    if kind == "local":
        from fissure.promotion.local import LocalActuator
        from fissure.serving.canary import Fault
        from fissure.settings import state_dir
        from fissure.stack import routing_file

        url = _stack_url("inference_url")
        if url is None:
            from fissure.errors import FissureError

            raise FissureError("no local stack is running here (.fissure/stack.json); `make up` first, "
                               "or choose --actuator kserve-gateway|kserve-knative for a cluster")
        abort, delay = fault
        return LocalActuator(url, routing_file(), state_dir() / "serving" / "canary",
                             fault=Fault(abort_percent=abort, delay_ms=delay) if abort or delay else None)
    from fissure.promotion import kubernetes

    cls = kubernetes.GatewayActuator if kind == "kserve-gateway" else kubernetes.KnativeActuator
    return cls(namespace=namespace, release=release)


@click.command("promote")
@click.option("--model", required=True, type=MODELS, help="Registered model whose challenger to canary.")
@click.option("--challenger", "version", default=None, help="Version to canary [default: the challenger alias].")
@click.option("--actuator", type=click.Choice(ACTUATORS), default="local", show_default=True,
              help="local: the `make up` stack's front; kserve-gateway: KServe Standard mode + the chart's "
                   "weighted HTTPRoute; kserve-knative: KServe's canaryTrafficPercent.")
@click.option("--namespace", envvar="FISSURE_NAMESPACE", default=None, help="Kubernetes namespace (cluster actuators).")
@click.option("--release", envvar="FISSURE_RELEASE", default="fissure", show_default=True,
              help="Helm release of the chart (cluster actuators).")
@click.option("--prometheus", "prometheus_url", envvar="FISSURE_PROMETHEUS_URL", default=None,
              help="Prometheus with the front's metrics [default: the local stack's].")
@click.option("--storage-root", envvar="FISSURE_MODEL_STORE_URI", default=None,
              help="Where packaged versions live for a cluster: <root>/<model>/<version> (e.g. s3://fissure-models).")
@click.option("--steps", default=None, help="Comma-separated challenger shares, e.g. 10,50 [params canary.steps].")
@click.option("--bake", "bake", type=Duration(), default=None, help="Time at each step, e.g. 300, 5m [params].")
@click.option("--poll", "poll", type=Duration(), default=None, help="Time between evidence checks [params].")
@click.option("--max-wait", "max_wait", type=Duration(), default=None,
              help="How long a step may wait for enough traffic [params].")
@click.option("--abort", is_flag=True, help="Roll back whatever canary of MODEL is in flight, then exit.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write the outcome as JSON.")
@click.option("--fault-abort-percent", type=click.FloatRange(0, 100), default=0.0,
              help="Chaos test (local actuator): answer this share of the challenger's requests with 500.")
@click.option("--fault-delay-ms", type=click.FloatRange(0, 60000), default=0.0,
              help="Chaos test (local actuator): delay each challenger request by this much.")
@_params_option
def promote(model, version, actuator, namespace, release, prometheus_url, storage_root, steps, bake, poll,
            max_wait, abort, out, fault_abort_percent, fault_delay_ms, params):
    """Canary MODEL's challenger on live traffic; promote it or roll it back on Prometheus evidence.

    Exit 0 promoted, 3 rolled back, 1 stopped by a failure (champion serving 100 %)."""
    from fissure.errors import UsageError
    from fissure.promotion.controller import Controller, Registry

    if (fault_abort_percent or fault_delay_ms) and actuator != "local":
        raise UsageError("--fault-* work with --actuator local only")
    policy = _policies(params).canary
    update = {k: v for k, v in (("bake_seconds", bake), ("poll_seconds", poll), ("max_wait_seconds", max_wait))
              if v is not None}
    if steps:
        try:
            update["steps"] = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--steps must be comma-separated integers, not {steps!r}") from None
    if update:
        from pydantic import ValidationError

        try:
            policy = type(policy).model_validate({**policy.model_dump(), **update})
        except ValidationError as exc:
            raise UsageError(f"--steps/--bake: {exc.errors()[0]['msg']}") from None
    act = _actuator(actuator, namespace, release, (fault_abort_percent, fault_delay_ms))
    prometheus_url = prometheus_url or _stack_url("prometheus_url")
    if not prometheus_url and not abort:
        raise UsageError("no Prometheus: pass --prometheus URL (or set FISSURE_PROMETHEUS_URL)")
    ctl = Controller(act, prometheus_url or "", policy, Registry(storage_root=storage_root), _events(click.echo),
                     namespace=namespace or ".*", echo=click.echo)
    if abort:
        click.echo(ctl.abort(model))
        return
    outcome = ctl.run(model, version)
    _write(out, outcome.to_dict())
    if not outcome.promoted:
        sys.exit(REFUSED)


@click.command("retrain")
@click.option("--model", "models", multiple=True, type=MODELS,
              help="Models to retrain and gate (repeatable) [default: both].")
@click.option("--min-feedback", type=click.IntRange(min=0), default=0, show_default=True,
              help="Skip unless at least this many judged feedback items arrived since the last training.")
@click.option("--no-export", is_flag=True, help="Use data/feedback as it is (no `fissure feedback export`).")
@click.option("--promote", "then_promote", is_flag=True,
              help="Canary every challenger that passes the gate (`fissure promote`, local stack).")
@click.option("--argo", is_flag=True, help="Submit the Argo WorkflowTemplate fissure-retrain in the cluster instead.")
@click.option("--namespace", envvar="FISSURE_NAMESPACE", default=None, help="Namespace for --argo.")
@click.option("--template", envvar="FISSURE_ARGO_TEMPLATE", default=None,
              help="WorkflowTemplate for --argo: the chart's <release>-retrain [default: fissure-retrain, release fissure's].")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the gate decisions as JSON.")
@_params_option
def retrain(models, min_feedback, no_export, then_promote, argo, namespace, template, out, params):
    """Export feedback, `dvc repro`, gate each new challenger (and canary it with --promote).

    Exit 0 when every new challenger passed (or nothing was new), 3 when the gate refused one."""
    if argo:
        from fissure.promotion import argo as argo_submit
        from fissure.promotion.controller import who

        given = {"models": list(models) or None, "min_feedback": min_feedback or None,
                 "promote": bool(then_promote)}  # as locally: the canary only with --promote
        name = argo_submit.submit_retrain(argo_submit.params_from(**{k: v for k, v in given.items() if v is not None}),
                                          namespace=namespace, template=template or argo_submit.TEMPLATE,
                                          submitted_by=who())
        click.echo(f"submitted workflow {name}: `argo get {name}` or the Argo UI show its steps and the gate's numbers")
        return
    models = list(models) or sorted(MODEL_NAMES.values())
    from fissure.promotion.retrain import retrain as run

    policies = _policies(params)
    result = run(_root(), models, policies.gate, min_feedback=min_feedback, export=not no_export, echo=click.echo)
    for d in result.decisions.values():
        _gate_event(d, click.echo)
    _write(out, {"skipped": result.skipped, "new_versions": result.new_versions,
                 "decisions": {m: d.to_dict() for m, d in result.decisions.items()}})
    if result.skipped:
        click.echo(f">> nothing to do: {result.skipped}")
        return
    refused = [m for m, d in result.decisions.items() if not d.passed]
    if then_promote:
        from fissure.promotion.controller import Controller, Registry

        for m in result.passed:
            ctl = Controller(_actuator("local", None, None, (0, 0)), _stack_url("prometheus_url") or "",
                             policies.canary, Registry(), _events(click.echo), echo=click.echo)
            if not ctl.run(m).promoted:
                refused.append(m)
    if refused:
        click.echo(f">> not promoted: {', '.join(refused)}")
        sys.exit(REFUSED)
