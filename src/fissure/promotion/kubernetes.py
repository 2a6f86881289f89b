"""The promotion controller's Kubernetes actuators: KServe's own canary (Knative mode) and a
weighted Gateway API HTTPRoute over two InferenceServices (Standard mode, the chart's default).

Both talk to the API server with the ``kubernetes`` client and need only ``get`` and ``patch``
on the objects the chart's ``promotion-rbac.yaml`` names. Names follow the chart:

- champion InferenceService: ``<release>-<model>``, its predictor Service ``<release>-<model>-predictor``
  (release-prefixed, so two releases share a namespace; the served model name in URLs stays ``<model>``);
- challenger InferenceService (Standard mode): ``<release>-<model>-challenger``;
- weighted HTTPRoute (Standard mode): ``<release>-<model>-canary``.

What a re-run after a crash needs to know lives on the objects themselves (``fissure.dev/*``
annotations), and fissure's annotations change only in patches that change the model anyway:
KServe copies an InferenceService's annotations into its pods' template, so a lone annotation
change would roll the pods.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fissure.errors import FissureError, NotFoundError, Unavailable, UsageError
from fissure.promotion.actuators import ModelRef, TrafficState

KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
GATEWAY = ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")

ANN_CHAMPION_URI = "fissure.dev/champion-storage-uri"
ANN_CHAMPION_VERSION = "fissure.dev/champion-version"
ANN_CHALLENGER_URI = "fissure.dev/challenger-storage-uri"
ANN_CHALLENGER_VERSION = "fissure.dev/challenger-version"
ANN_VERSION = "fissure.dev/version"  # the model version an InferenceService serves

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class KubeSettings(BaseModel):
    """Where the release lives and how long to wait for it."""

    model_config = ConfigDict(extra="forbid")

    namespace: str | None = Field(None, description="the release's namespace; None: in-cluster or kubeconfig's")
    release: str = Field("fissure", description="Helm release name (names the InferenceServices and the canary route)")
    kubeconfig: str | None = Field(None, description="kubeconfig file; None: in-cluster, else $KUBECONFIG/~/.kube")
    context: str | None = None
    ready_timeout_s: float = Field(600, gt=0, description="how long a model may take to become Ready")
    poll_s: float = Field(2, gt=0)
    request_timeout_s: float = Field(30, gt=0, description="one API call's connect+read timeout")


def api_client(settings: KubeSettings):
    """A client from the pod's service account in a cluster, else from kubeconfig."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except ConfigException as exc:
            raise Unavailable(f"in-cluster Kubernetes config unusable: {exc}") from exc
    try:
        return config.new_client_from_config(config_file=settings.kubeconfig, context=settings.context)
    except (ConfigException, OSError) as exc:
        where = settings.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise Unavailable(f"no Kubernetes config: not in a cluster and {where} is unusable ({exc})") from exc


def default_namespace(settings: KubeSettings) -> str:
    if settings.namespace:
        return settings.namespace
    if os.path.isfile(IN_CLUSTER_NAMESPACE):
        with open(IN_CLUSTER_NAMESPACE) as fh:
            return fh.read().strip()
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=settings.kubeconfig)
        return (active or {}).get("context", {}).get("namespace") or "default"
    except Exception:  # no kubeconfig: the client call will say so
        return "default"


class KubeObjects:
    """get/patch of namespaced custom objects, with the API's errors as fissure errors."""

    def __init__(self, settings: KubeSettings, client=None):
        from kubernetes import client as k8s

        self.settings = settings
        self.namespace = default_namespace(settings)
        self._api = k8s.CustomObjectsApi(client or api_client(settings))
        self.server = self._api.api_client.configuration.host

    def _call(self, verb: str, res: tuple, name: str, fn: Callable, *args, **kw) -> dict:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        group, _version, plural, kind = res
        what = f"{kind} {self.namespace}/{name}"
        try:
            return fn(group, res[1], self.namespace, plural, name, *args,
                      _request_timeout=self.settings.request_timeout_s, **kw)
        except ApiException as exc:
            reason = _api_reason(exc)
            if exc.status == 403:
                raise FissureError(
                    f"Kubernetes forbids {verb!r} on {plural}.{group} {name!r} in namespace {self.namespace}: "
                    f"the service account needs RBAC verb {verb} on it (the chart's promotion Role); {reason}",
                    http_status=403) from None
            if exc.status == 404:
                raise NotFoundError(f"{what} not found on {self.server}; {reason}") from None
            if exc.status in (401,):
                raise FissureError(f"Kubernetes API {self.server} refused the credentials: {reason}") from None
            if not exc.status or exc.status == 429 or exc.status >= 500:
                raise Unavailable(f"Kubernetes API {self.server} failed to {verb} {what}: {reason}") from None
            raise FissureError(f"Kubernetes refused to {verb} {what} ({exc.status}): {reason}") from None
        except (HTTPError, OSError) as exc:
            raise Unavailable(f"Kubernetes API {self.server} unreachable ({verb} {what}): "
                              f"{type(exc).__name__}: {exc}".splitlines()[0]) from None

    def get(self, res: tuple, name: str) -> dict:
        return self._call("get", res, name, self._api.get_namespaced_custom_object)

    def merge_patch(self, res: tuple, name: str, patch: dict) -> dict:
        return self._call("patch", res, name, self._api.patch_namespaced_custom_object, patch,
                          _content_type=MERGE_PATCH)

    def json_patch(self, res: tuple, name: str, ops: list[dict]) -> dict:
        return self._call("patch", res, name, self._api.patch_namespaced_custom_object, ops,
                          _content_type=JSON_PATCH)

    def wait(self, res: tuple, name: str, what: str, check: Callable[[dict], str | None]) -> dict:
        """Poll until ``check`` returns None (ready); its strings say what is still missing."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while True:
            obj = self.get(res, name)
            missing = check(obj)
            if missing is None:
                return obj
            if time.monotonic() >= deadline:
                raise Unavailable(f"timed out after {self.settings.ready_timeout_s:g}s waiting for {res[3]} "
                                  f"{self.namespace}/{name} {what}: {missing}")
            time.sleep(self.settings.poll_s)


def _api_reason(exc) -> str:
    try:
        body = json.loads(exc.body or "")
        message = body.get("message") or exc.reason
    except (ValueError, TypeError, AttributeError):
        message = exc.reason or str(exc)
    return str(message or "no reason given").splitlines()[0]


def _condition(obj: dict, kind: str) -> dict | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def isvc_not_ready(generation: int, knative: bool) -> Callable[[dict], str | None]:
    """What keeps an InferenceService from serving the given generation (None: it serves it)."""

    def check(obj: dict) -> str | None:
        status = obj.get("status") or {}
        observed = status.get("observedGeneration")
        # KServe reports the generation it reconciled; until then Ready describes the old spec.
        if observed is not None and observed < generation:
            return f"KServe has reconciled generation {observed}, not {generation} yet"
        ready = _condition(obj, "Ready")
        if not ready or ready.get("status") != "True":
            if not ready:
                return "no Ready condition yet"
            return f"Ready={ready.get('status')} {ready.get('reason') or ''}: {ready.get('message') or ''}".strip()
        if knative:
            pred = (status.get("components") or {}).get("predictor") or {}
            created, latest = pred.get("latestCreatedRevision"), pred.get("latestReadyRevision")
            if not created or created != latest:
                return f"latest revision {created or '?'} not ready (ready: {latest or 'none'})"
        return None

    return check


def route_not_accepted(generation: int) -> Callable[[dict], str | None]:
    """What keeps the Gateway(s) from routing the given generation of an HTTPRoute."""

    def check(obj: dict) -> str | None:
        parents = (obj.get("status") or {}).get("parents") or []
        if not parents:
            return "no Gateway reports on it yet (status.parents is empty)"
        for parent in parents:
            ref = (parent.get("parentRef") or {}).get("name", "?")
            for kind in ("Accepted", "ResolvedRefs"):
                cond = next((c for c in parent.get("conditions") or [] if c.get("type") == kind), None)
                if cond is None or cond.get("observedGeneration", 0) < generation:
                    return f"Gateway {ref} has not reported {kind} for generation {generation}"
                if cond.get("status") != "True":
                    return f"Gateway {ref}: {kind}={cond.get('status')} {cond.get('reason', '')}: {cond.get('message', '')}"
        return None

    return check


def _storage_uri(isvc: dict) -> str | None:
    return (((isvc.get("spec") or {}).get("predictor") or {}).get("model") or {}).get("storageUri")


def _annotations(obj: dict) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _need_uri(ref: ModelRef, role: str) -> str:
    if not ref.storage_uri:
        raise UsageError(f"{role} {ref.name} version {ref.version} has no storage_uri: a cluster "
                         f"actuator serves packaged models from the model store (s3://...)")
    return ref.storage_uri


class KnativeActuator:
    """KServe Serverless mode: ``spec.predictor.canaryTrafficPercent`` between two revisions.

    The challenger is a new revision of the champion's own InferenceService: KServe routes
    ``canaryTrafficPercent`` to the latest revision and the rest to the last one rolled out.
    """

    name = "kserve-knative"

    def __init__(self, settings: KubeSettings | None = None, client=None, *,
                 namespace: str | None = None, release: str | None = None):
        self.settings = _settings(settings, namespace, release)
        self.kube = KubeObjects(self.settings, client)

    def isvc(self, model: str) -> str:
        """The model's InferenceService, named after the release as the chart names it."""
        return champion_isvc(self.settings, model)

    def _wait_ready(self, obj: dict) -> dict:
        name, gen = obj["metadata"]["name"], obj["metadata"].get("generation", 0)
        return self.kube.wait(KSERVE, name, f"to serve generation {gen} (Ready, latest revision ready)",
                              isvc_not_ready(gen, knative=True))

    def state(self, model: str) -> TrafficState:
        isvc = self.kube.get(KSERVE, self.isvc(model))
        ann = _annotations(isvc)
        uri, champion_uri = _storage_uri(isvc), ann.get(ANN_CHAMPION_URI)
        percent = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
        if champion_uri is None or uri == champion_uri:
            return TrafficState(ann.get(ANN_CHAMPION_VERSION) or ann.get(ANN_VERSION), None, 0)
        if percent is None:  # promoted: the challenger's revision takes everything
            return TrafficState(ann.get(ANN_CHALLENGER_VERSION), None, 0)
        return TrafficState(ann.get(ANN_CHAMPION_VERSION), ann.get(ANN_CHALLENGER_VERSION), int(percent))

    def prepare(self, champion: ModelRef, challenger: ModelRef) -> None:
        uri = _need_uri(challenger, "challenger")
        isvc = self.kube.get(KSERVE, self.isvc(champion.name))
        champion_uri = champion.storage_uri or _annotations(isvc).get(ANN_CHAMPION_URI) or _storage_uri(isvc)
        # One patch: the new revision, 0 % for it, and what a rollback needs to know.
        patched = self.kube.merge_patch(KSERVE, self.isvc(champion.name), {
            "metadata": {"annotations": {
                ANN_CHAMPION_URI: champion_uri, ANN_CHAMPION_VERSION: str(champion.version),
                ANN_CHALLENGER_URI: uri, ANN_CHALLENGER_VERSION: str(challenger.version),
            }},
            "spec": {"predictor": {"canaryTrafficPercent": 0, "model": {"storageUri": uri}}},
        })
        self._wait_ready(patched)

    def set_weight(self, model: str, percent: int) -> None:
        percent = _percent(percent)
        isvc = self.kube.get(KSERVE, self.isvc(model))
        if _storage_uri(isvc) == _annotations(isvc).get(ANN_CHAMPION_URI) or ANN_CHAMPION_URI not in _annotations(isvc):
            raise FissureError(f"InferenceService {self.kube.namespace}/{self.isvc(model)} has no challenger revision "
                               f"to send {percent}% to: prepare it first")
        patched = self.kube.merge_patch(KSERVE, self.isvc(model), {"spec": {"predictor": {"canaryTrafficPercent": percent}}})
        self._wait_ready(patched)

    def promote(self, challenger: ModelRef) -> None:
        isvc = self.kube.get(KSERVE, self.isvc(challenger.name))
        if challenger.storage_uri and _storage_uri(isvc) != challenger.storage_uri:
            # Not the latest revision (e.g. the controller putting the old champion back): make
            # it the latest at 0 %, wait until it is ready, then give it everything.
            self._wait_ready(self.kube.merge_patch(KSERVE, self.isvc(challenger.name), {
                "metadata": {"annotations": {
                    ANN_CHAMPION_URI: challenger.storage_uri, ANN_CHAMPION_VERSION: str(challenger.version),
                    ANN_CHALLENGER_URI: None, ANN_CHALLENGER_VERSION: None}},
                "spec": {"predictor": {"canaryTrafficPercent": 0, "model": {"storageUri": challenger.storage_uri}}},
            }))
        # No canary percent: KServe sends 100 % to the latest (the challenger's) revision.
        patched = self.kube.merge_patch(KSERVE, self.isvc(challenger.name), {"spec": {"predictor": {"canaryTrafficPercent": None}}})
        self._wait_ready(patched)

    def rollback(self, model: str) -> None:
        isvc = self.kube.get(KSERVE, self.isvc(model))
        champion_uri = _annotations(isvc).get(ANN_CHAMPION_URI)
        percent = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
        if percent is None:
            return  # no canary in flight: the champion (or a promoted challenger) has 100 %
        if champion_uri is None or _storage_uri(isvc) == champion_uri:
            # a canary percent with the champion's model as latest revision: drop it
            self._wait_ready(self.kube.merge_patch(KSERVE, self.isvc(model), {"spec": {"predictor": {"canaryTrafficPercent": None}}}))
            return
        # 1. 0 %: KServe routes everything to the revision last rolled out (the champion) at once.
        # 2. the champion's model as the latest revision, still at 0 %, and wait until it is ready;
        # 3. only then drop the percent, so that 100 % never lands on a revision still starting.
        self.kube.merge_patch(KSERVE, self.isvc(model), {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
        self._wait_ready(self.kube.merge_patch(KSERVE, self.isvc(model), {
            "spec": {"predictor": {"canaryTrafficPercent": 0, "model": {"storageUri": champion_uri}}}}))
        self._wait_ready(self.kube.merge_patch(KSERVE, self.isvc(model), {"spec": {"predictor": {"canaryTrafficPercent": None}}}))


def champion_isvc(settings: KubeSettings, model: str) -> str:
    """A model's (champion) InferenceService: ``<release>-<model>``, as the chart names it."""
    return f"{settings.release}-{model}"


def _settings(settings: KubeSettings | None, namespace: str | None, release: str | None) -> KubeSettings:
    settings = settings or KubeSettings()
    changes = {k: v for k, v in (("namespace", namespace), ("release", release)) if v}
    return settings.model_copy(update=changes) if changes else settings


def _percent(percent: int) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise UsageError(f"canary percent must be an integer 0..100, got {percent!r}")
    return percent


class GatewayActuator:
    """KServe Standard mode: the chart's challenger InferenceService and a weighted HTTPRoute.

    KServe v0.20 puts no weights on its routes, so the chart renders, per model, a second
    InferenceService for the challenger and an HTTPRoute whose one rule sends the model's REST
    paths to both predictor Services; this actuator moves the weights. Traffic that does not go
    through the Gateway (the API calls the champion's Service directly, gRPC) stays on the
    champion.
    """

    name = "kserve-gateway"

    def __init__(self, settings: KubeSettings | None = None, client=None, *,
                 namespace: str | None = None, release: str | None = None):
        self.settings = _settings(settings, namespace, release)
        self.kube = KubeObjects(self.settings, client)

    # names, as charts/fissure/templates/canary.yaml renders them
    def champion_isvc(self, model: str) -> str:
        return champion_isvc(self.settings, model)

    def challenger_isvc(self, model: str) -> str:
        return f"{self.settings.release}-{model}-challenger"

    def route(self, model: str) -> str:
        return f"{self.settings.release}-{model}-canary"

    def _services(self, model: str) -> tuple[str, str]:
        return f"{self.champion_isvc(model)}-predictor", f"{self.challenger_isvc(model)}-predictor"

    def _wait_isvc(self, obj: dict) -> dict:
        name, gen = obj["metadata"]["name"], obj["metadata"].get("generation", 0)
        return self.kube.wait(KSERVE, name, f"to serve generation {gen} (Ready)", isvc_not_ready(gen, knative=False))

    def _weights(self, route: dict, model: str) -> list[tuple[int, int, int]]:
        """(rule, champion backend index, challenger backend index) of every weighted rule."""
        champion, challenger = self._services(model)
        found = []
        for i, rule in enumerate((route.get("spec") or {}).get("rules") or []):
            names = [b.get("name") for b in rule.get("backendRefs") or []]
            if champion in names and challenger in names:
                found.append((i, names.index(champion), names.index(challenger)))
        if not found:
            raise FissureError(f"HTTPRoute {self.kube.namespace}/{route['metadata']['name']} has no rule with "
                               f"backends {champion} and {challenger}: render the chart with canary.enabled")
        return found

    def _set_route(self, model: str, percent: int, annotations: dict[str, str | None]) -> None:
        """Weights (champion 100-percent, challenger percent) and fissure's annotations, in one
        JSON patch that first tests the backends it weights are still the ones it read."""
        name = self.route(model)
        route = self._route(model)
        champion, challenger = self._services(model)
        ops: list[dict[str, Any]] = []
        for i, c, k in self._weights(route, model):
            base = f"/spec/rules/{i}/backendRefs"
            ops += [{"op": "test", "path": f"{base}/{c}/name", "value": champion},
                    {"op": "test", "path": f"{base}/{k}/name", "value": challenger},
                    {"op": "add", "path": f"{base}/{c}/weight", "value": 100 - percent},
                    {"op": "add", "path": f"{base}/{k}/weight", "value": percent}]
        have = _annotations(route)
        if not (route.get("metadata") or {}).get("annotations") and any(v is not None for v in annotations.values()):
            ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
        for key, value in annotations.items():
            path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
            if value is not None:
                ops.append({"op": "add", "path": path, "value": value})
            elif key in have:
                ops.append({"op": "remove", "path": path})
        patched = self.kube.json_patch(GATEWAY, name, ops)
        gen = patched["metadata"].get("generation", 0)
        self.kube.wait(GATEWAY, name, f"generation {gen} to be accepted by its Gateway(s)", route_not_accepted(gen))

    def _route(self, model: str) -> dict:
        try:
            return self.kube.get(GATEWAY, self.route(model))
        except NotFoundError as exc:
            raise NotFoundError(f"{exc} (the chart renders it with canary.enabled and route.type gatewayAPI, "
                                f"named after --release {self.settings.release})") from None

    def state(self, model: str) -> TrafficState:
        route = self._route(model)
        ann = _annotations(route)
        rules = self._weights(route, model)
        i, _c, k = rules[0]
        percent = int(route["spec"]["rules"][i]["backendRefs"][k].get("weight", 1))
        champion_version = ann.get(ANN_CHAMPION_VERSION)
        if champion_version is None:
            champion_version = _annotations(self.kube.get(KSERVE, self.champion_isvc(model))).get(ANN_VERSION)
        challenger_version = ann.get(ANN_CHALLENGER_VERSION)
        if challenger_version is None:
            return TrafficState(champion_version, None, percent)
        return TrafficState(champion_version, challenger_version, percent)

    def prepare(self, champion: ModelRef, challenger: ModelRef) -> None:
        uri = _need_uri(challenger, "challenger")
        model = champion.name
        # Champion at 100 % before the challenger's model changes under the route.
        self._set_route(model, 0, {})
        name = self.challenger_isvc(model)
        patched = self.kube.merge_patch(KSERVE, name, {
            "metadata": {"annotations": {ANN_VERSION: str(challenger.version)}},
            "spec": {"predictor": {"model": {"storageUri": uri}}},
        })
        self._wait_isvc(patched)
        champion_isvc = self.kube.get(KSERVE, self.champion_isvc(model))
        self._set_route(model, 0, {
            ANN_CHAMPION_VERSION: str(champion.version),
            ANN_CHAMPION_URI: champion.storage_uri or _storage_uri(champion_isvc),
            ANN_CHALLENGER_VERSION: str(challenger.version),
            ANN_CHALLENGER_URI: uri,
        })

    def set_weight(self, model: str, percent: int) -> None:
        percent = _percent(percent)
        if percent and ANN_CHALLENGER_VERSION not in _annotations(self._route(model)):
            raise FissureError(f"no challenger is prepared for {model} (HTTPRoute {self.route(model)} names "
                               f"none): prepare it before sending it {percent}%")
        self._set_route(model, percent, {})

    def promote(self, challenger: ModelRef) -> None:
        uri = _need_uri(challenger, "challenger")
        model = challenger.name
        # The champion's InferenceService takes the challenger's model (KServe rolls its pods),
        # then the champion's Service gets all traffic again; the challenger stays, idle.
        patched = self.kube.merge_patch(KSERVE, self.champion_isvc(model), {
            "metadata": {"annotations": {ANN_VERSION: str(challenger.version)}},
            "spec": {"predictor": {"model": {"storageUri": uri}}},
        })
        self._wait_isvc(patched)
        self._set_route(model, 0, {ANN_CHAMPION_VERSION: str(challenger.version), ANN_CHAMPION_URI: uri,
                                   ANN_CHALLENGER_VERSION: None, ANN_CHALLENGER_URI: None})

    def rollback(self, model: str) -> None:
        try:
            route = self.kube.get(GATEWAY, self.route(model))
        except NotFoundError:
            return  # no canary route: the champion's own route serves 100 %
        self._weights(route, model)  # a route that is not the chart's canary route is an error
        ann = _annotations(route)
        champion_uri = ann.get(ANN_CHAMPION_URI)
        if ANN_CHALLENGER_VERSION in ann and champion_uri:
            # A promotion that stopped half-way left the champion with the challenger's model:
            # give it its own model back before it takes all traffic again.
            isvc = self.kube.get(KSERVE, self.champion_isvc(model))
            if _storage_uri(isvc) != champion_uri:
                self._wait_isvc(self.kube.merge_patch(KSERVE, self.champion_isvc(model), {
                    "metadata": {"annotations": {ANN_VERSION: ann.get(ANN_CHAMPION_VERSION)}},
                    "spec": {"predictor": {"model": {"storageUri": champion_uri}}},
                }))
        self._set_route(model, 0, {ANN_CHALLENGER_VERSION: None, ANN_CHALLENGER_URI: None})
