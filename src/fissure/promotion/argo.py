"""Retraining in a cluster: submit a Workflow from the WorkflowTemplate ``fissure-retrain``.

``fissure retrain --argo`` and the API's ``POST /retrain`` (in a cluster) call
:func:`submit_retrain`. It creates, with the kubernetes Python client, an Argo ``Workflow`` that
only references the template (``workflowTemplateRef``) and names the parameters the caller set;
everything else, the repository to train from included, is the chart's (argo/fissure_workflows.py
defines the template, docs/retraining.md describes the run). Parameters travel as Workflow
arguments, which the template hands to its scripts as environment variables.

Errors are one line: :class:`~fissure.errors.UsageError` for bad parameters or no cluster
configuration, :class:`~fissure.errors.FissureError` when the API server refuses (no template,
no Argo CRDs, forbidden), :class:`~fissure.errors.Unavailable` when it cannot be reached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fissure.errors import FissureError, Unavailable, UsageError

GROUP, VERSION = "argoproj.io", "v1alpha1"
TEMPLATE = "fissure-retrain"
ACTUATORS = ("kserve-gateway", "kserve-knative")  # the cluster's actuators (local runs without Argo)
_IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class RetrainParams(BaseModel):
    """The fissure-retrain parameters a caller may set; None keeps the template's default."""

    model_config = ConfigDict(extra="forbid")

    revision: str | None = Field(None, pattern=r"^[^\s{}]{1,200}$", description="git branch, tag or commit")
    models: list[str] | None = Field(None, min_length=1, description="models to gate and promote")
    min_feedback: int | None = Field(None, ge=0, description="retrain only with this many new judged items")
    promote: bool | None = Field(None, description="run the canary promotion after a passed gate")
    actuator: Literal["kserve-gateway", "kserve-knative"] | None = None
    steps: list[int] | None = Field(None, min_length=1, description="canary steps, percent of traffic")
    bake: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?(s|m|h)?$", description="time at each canary step: 300, 5m")

    @field_validator("models")
    @classmethod
    def _model_names(cls, names: list[str]) -> list[str]:
        import re

        bad = [n for n in names if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", n)]
        if bad:
            raise ValueError(f"not a model name: {', '.join(bad)}")
        return names

    @field_validator("steps")
    @classmethod
    def _percentages(cls, steps: list[int]) -> list[int]:
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("steps must be increasing percentages in 1..100")
        return steps

    def arguments(self) -> list[dict[str, str]]:
        """Workflow arguments for the fields that are set, as the template names them."""
        values = {
            "revision": self.revision,
            "models": None if self.models is None else json.dumps(self.models),
            "min-feedback": None if self.min_feedback is None else str(self.min_feedback),
            "promote": None if self.promote is None else str(self.promote).lower(),
            "actuator": self.actuator,
            "steps": None if self.steps is None else ",".join(map(str, self.steps)),
            "bake": self.bake,
        }
        return [{"name": k, "value": v} for k, v in values.items() if v is not None]


def workflow_manifest(params: RetrainParams, *, template: str = TEMPLATE, submitted_by: str | None = None) -> dict:
    """The Workflow object :func:`submit_retrain` creates."""
    labels = {"app.kubernetes.io/part-of": "fissure", "app.kubernetes.io/component": "retraining",
              "workflows.argoproj.io/workflow-template": template}
    meta: dict = {"generateName": f"{template}-", "labels": labels}
    if submitted_by:
        meta["annotations"] = {"fissure.dev/submitted-by": submitted_by[:253]}
    spec: dict = {"workflowTemplateRef": {"name": template}}
    args = params.arguments()
    if args:
        spec["arguments"] = {"parameters": args}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Workflow", "metadata": meta, "spec": spec}


def params_from(**given) -> RetrainParams:
    """RetrainParams from keyword arguments, with a one-line UsageError for a bad value."""
    try:
        return RetrainParams(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "parameters"
        raise UsageError(f"retrain --argo: {where}: {err['msg']}") from None


def _api_client(kubeconfig: str | None):
    from kubernetes import client, config

    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return client.ApiClient(), _in_cluster_namespace()
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        return client.ApiClient(cfg), (active or {}).get("context", {}).get("namespace")
    except (config.ConfigException, FileNotFoundError, OSError) as exc:
        raise UsageError(f"no Kubernetes cluster configured (in-cluster or KUBECONFIG / ~/.kube/config): "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _in_cluster_namespace() -> str | None:
    try:
        return _IN_CLUSTER_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def _api_error(exc, namespace: str, template: str) -> FissureError:
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    message = " ".join(str(message).split())
    if exc.status == 404:
        return FissureError(f"WorkflowTemplate {template} not found in namespace {namespace} (install the chart "
                            f"with argo.enabled=true, and Argo Workflows): {message}")
    if exc.status in (401, 403):
        return FissureError(f"not allowed to submit {template} in namespace {namespace}: {message}")
    return FissureError(f"the Kubernetes API refused the Workflow ({exc.status}): {message}")


def submit_retrain(params: RetrainParams | None = None, *, namespace: str | None = None, template: str = TEMPLATE,
                   kubeconfig: str | None = None, submitted_by: str | None = None) -> str:
    """Create a Workflow from ``template`` with ``params``; return its name (``fissure-retrain-xxxxx``).

    The namespace: ``namespace``, else FISSURE_NAMESPACE, else the pod's own (in a cluster) or the
    kubeconfig context's, else ``default``.
    """
    from kubernetes import client
    from urllib3.exceptions import HTTPError

    params = params or RetrainParams()
    api, context_ns = _api_client(kubeconfig)
    ns = namespace or os.environ.get("FISSURE_NAMESPACE") or context_ns or "default"
    objects = client.CustomObjectsApi(api)
    try:
        # The controller would only fail the Workflow later: say so now when the template is absent.
        objects.get_namespaced_custom_object(GROUP, VERSION, ns, "workflowtemplates", template)
        created = objects.create_namespaced_custom_object(
            GROUP, VERSION, ns, "workflows", workflow_manifest(params, template=template, submitted_by=submitted_by))
    except client.ApiException as exc:
        if exc.status == 0 or exc.status is None:
            raise Unavailable(f"Kubernetes API unreachable: {exc.reason}") from None
        raise _api_error(exc, ns, template) from None
    except (HTTPError, OSError) as exc:
        host = api.configuration.host
        raise Unavailable(f"Kubernetes API at {host} unreachable: {type(exc).__name__}") from None
    finally:
        api.close()
    return created["metadata"]["name"]
