"""A STAND-IN for kube-apiserver, for the Kubernetes actuators' tests: an in-test HTTP server
that speaks just the part of the Kubernetes REST API they use, on custom objects.

It is not Kubernetes. What it does as the API server does: GET and PATCH of namespaced custom
objects (JSON merge patch RFC 7386, JSON patch RFC 6902 incl. ``test``), ``metadata.generation``
bumped on spec changes only (CRDs with a status subresource), ``resourceVersion`` on every change,
``Status`` bodies for errors, every patched object validated against its CRD's schema (422 when
invalid, as the API server's structural-schema validation answers; CEL rules are not run), and
RBAC from a Role's rules (resourceNames included; 403 otherwise). Every request is recorded.

``FakeControllers`` plays KServe and a Gateway controller on the stored objects (it writes
``status`` directly into the store): it marks InferenceServices Ready for their current
generation (Knative mode: a new revision when the model changes) and HTTPRoutes Accepted.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema


class PatchError(Exception):
    pass


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc, parts):
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(doc, ops):
    """RFC 6902: add, remove, replace, test (what the actuators send)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op["path"])
        try:
            parent = _walk(doc, parts[:-1])
            last = parts[-1]
            kind = op["op"]
            if kind == "test":
                if _walk(doc, parts) != op["value"]:
                    raise PatchError(f"testing value {op['path']} failed")
            elif kind in ("add", "replace"):
                if isinstance(parent, list):
                    index = len(parent) if last == "-" else int(last)
                    if kind == "add":
                        parent.insert(index, copy.deepcopy(op["value"]))
                    else:
                        parent[index] = copy.deepcopy(op["value"])
                else:
                    if kind == "replace" and last not in parent:
                        raise PatchError(f"replace of missing {op['path']}")
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            else:
                raise PatchError(f"unsupported op {kind}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise PatchError(f"{op['op']} {op['path']}: missing ({exc})") from None
    return doc


@dataclass
class Recorded:
    method: str
    path: str
    content_type: str | None
    body: object
    status: int
    result: dict | None = None


@dataclass
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    schema: dict


class StandInAPIServer:
    """See the module docstring. ``url`` is the base address; ``objects`` the store."""

    def __init__(self, resources: list[Resource], role_rules: list[dict] | None = None,
                 user: str = "system:serviceaccount:fissure:fissure-promotion"):
        self.resources = {(r.group, r.version, r.plural): r for r in resources}
        self.validators = {key: jsonschema.Draft7Validator(r.schema) for key, r in self.resources.items()}
        self.role_rules = role_rules  # None: everything allowed
        self.user = user
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, namespace, name) -> object
        self.requests: list[Recorded] = []
        self.lock = threading.RLock()
        self._rv = 1000
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    # ---------------------------------------------------------------- store
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def add(self, obj: dict) -> None:
        group, version = obj["apiVersion"].split("/")
        res = next(r for r in self.resources.values() if r.group == group and r.kind == obj["kind"])
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = self._next_rv()
        meta.setdefault("uid", f"uid-{meta['name']}")
        self.validate(res, obj)
        with self.lock:
            self.objects[(res.plural, meta["namespace"], meta["name"])] = obj

    def get(self, plural: str, namespace: str, name: str) -> dict:
        with self.lock:
            return copy.deepcopy(self.objects[(plural, namespace, name)])

    def set_status(self, plural: str, namespace: str, name: str, status: dict) -> None:
        with self.lock:
            obj = self.objects[(plural, namespace, name)]
            candidate = copy.deepcopy(obj)
            candidate["status"] = status
            res = next(r for r in self.resources.values() if r.plural == plural)
            self.validate(res, candidate)
            obj["status"] = status
            obj["metadata"]["resourceVersion"] = self._next_rv()

    def validate(self, res: Resource, obj: dict) -> None:
        errors = sorted(self.validators[(res.group, res.version, res.plural)].iter_errors(obj), key=str)
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path)
            raise jsonschema.ValidationError(f"{res.kind} {obj['metadata'].get('name')}: {where}: {errors[0].message}")

    def patches(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PATCH"]

    # ---------------------------------------------------------------- RBAC
    def allowed(self, verb: str, group: str, plural: str, name: str) -> bool:
        if self.role_rules is None:
            return True
        for rule in self.role_rules:
            if (group in rule.get("apiGroups", []) and plural in rule.get("resources", [])
                    and verb in rule.get("verbs", [])
                    and (not rule.get("resourceNames") or name in rule["resourceNames"])):
                return True
        return False

    # ---------------------------------------------------------------- HTTP
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> dict:
                return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": message, "reason": reason, "code": code}

            def _route(self):
                parts = self.path.split("?")[0].strip("/").split("/")
                # apis/{group}/{version}/namespaces/{ns}/{plural}/{name}[/status]
                if len(parts) not in (7, 8) or parts[0] != "apis" or parts[3] != "namespaces":
                    return None
                group, version, ns, plural, name = parts[1], parts[2], parts[4], parts[5], parts[6]
                sub = parts[7] if len(parts) == 8 else None
                res = server.resources.get((group, version, plural))
                return (res, ns, name, sub) if res else None

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("Content-Type")
                body = json.loads(raw) if raw else None
                rec = Recorded(method, self.path, ctype, body, 0)
                with server.lock:
                    server.requests.append(rec)
                    status, answer = self._answer(method, ctype, body)
                    rec.status = status
                    rec.result = answer if status == 200 else None
                self._send(status, answer)

            def _answer(self, method: str, ctype: str | None, body) -> tuple[int, dict]:
                route = self._route()
                if route is None:
                    return 404, self._status(404, "NotFound", f"the server could not find the requested resource ({self.path})")
                res, ns, name, sub = route
                verb = {"GET": "get", "PATCH": "patch"}.get(method)
                if verb is None:
                    return 405, self._status(405, "MethodNotAllowed", f"{method} is not supported here")
                resource = res.plural + (f"/{sub}" if sub else "")
                if not server.allowed(verb, res.group, resource, name):
                    return 403, self._status(403, "Forbidden", (
                        f'{res.plural}.{res.group} "{name}" is forbidden: User "{server.user}" cannot {verb} '
                        f'resource "{resource}" in API group "{res.group}" in the namespace "{ns}"'))
                key = (res.plural, ns, name)
                if key not in server.objects:
                    return 404, self._status(404, "NotFound", f'{res.plural}.{res.group} "{name}" not found')
                obj = server.objects[key]
                if method == "GET":
                    return 200, copy.deepcopy(obj)
                try:
                    if ctype == "application/merge-patch+json":
                        new = merge_patch(obj, body)
                    elif ctype == "application/json-patch+json":
                        new = json_patch(obj, body)
                    else:
                        return 415, self._status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format ({ctype})")
                except PatchError as exc:
                    return 422, self._status(422, "Invalid", f"the server rejected our request due to an error in our request: {exc}")
                # What a patch may not change, and what the server owns.
                for fixed in ("name", "namespace", "uid"):
                    new.setdefault("metadata", {})[fixed] = obj["metadata"].get(fixed)
                if sub != "status":
                    new["status"] = copy.deepcopy(obj.get("status"))
                    if new.get("status") is None:
                        new.pop("status", None)
                else:
                    new["spec"] = copy.deepcopy(obj.get("spec"))
                try:
                    server.validate(res, new)
                except jsonschema.ValidationError as exc:
                    return 422, self._status(422, "Invalid", f'{res.kind}.{res.group} "{name}" is invalid: {exc.message}')
                if new.get("spec") != obj.get("spec"):
                    new["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
                else:
                    new["metadata"]["generation"] = obj["metadata"].get("generation", 1)
                if new != obj:
                    new["metadata"]["resourceVersion"] = server._next_rv()
                server.objects[key] = new
                return 200, copy.deepcopy(new)

            def do_GET(self):
                self._handle("GET")

            def do_PATCH(self):
                self._handle("PATCH")

        return Handler


class StandInStore:
    """FakeControllers' view of a StandInAPIServer: its objects, written directly."""

    def __init__(self, server: StandInAPIServer):
        self.server = server

    def items(self) -> list[tuple[str, str, str, dict]]:
        with self.server.lock:
            return [(plural, ns, name, copy.deepcopy(obj)) for (plural, ns, name), obj in self.server.objects.items()]

    def set_status(self, plural: str, namespace: str, name: str, status: dict) -> None:
        self.server.set_status(plural, namespace, name, status)


@dataclass
class FakeControllers:
    """Plays KServe and a Gateway controller: writes the status they would write, for the
    generation each object has, through ``store`` (a StandInAPIServer, or a real API server's
    status subresource)."""

    store: object  # StandInAPIServer, or anything with items() and set_status()
    knative: bool = False
    stuck: dict[str, str] = field(default_factory=dict)  # InferenceService name -> reason it fails
    no_gateway: bool = False  # no Gateway controller: routes never get a status
    revisions: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # name -> [(revision, storageUri)]
    interval_s: float = 0.02

    def __post_init__(self):
        if isinstance(self.store, StandInAPIServer):
            self.store = StandInStore(self.store)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.step()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.step()

    def step(self) -> None:
        for plural, ns, name, obj in self.store.items():
            gen = obj["metadata"].get("generation", 1)
            if plural == "inferenceservices":
                status = self._isvc(name, obj, gen)
            elif plural == "httproutes" and not self.no_gateway:
                status = self._route(obj, gen)
            else:
                status = None
            if status is not None:
                self.store.set_status(plural, ns, name, status)

    def _isvc(self, name: str, obj: dict, gen: int) -> dict | None:
        status = obj.get("status") or {}
        if status.get("observedGeneration") == gen:
            return None
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if name in self.stuck:
            cond = {"type": "Ready", "status": "False", "reason": self.stuck[name],
                    "message": "the predictor failed to load the model", "lastTransitionTime": now}
            return {"observedGeneration": gen, "conditions": [cond]}
        predictor = obj["spec"]["predictor"]
        uri = predictor["model"]["storageUri"]
        new = {"observedGeneration": gen, "conditions": [
            {"type": "PredictorReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ]}
        if self.knative:
            revs = self.revisions.setdefault(name, [])
            if not revs or revs[-1][1] != uri:
                revs.append((f"{name}-predictor-{len(revs) + 1:05d}", uri))
            latest = revs[-1][0]
            pred = dict(status.get("components", {}).get("predictor", {}))
            pred.update(latestCreatedRevision=latest, latestReadyRevision=latest)
            percent = predictor.get("canaryTrafficPercent")
            prev = pred.get("latestRolledoutRevision")
            if percent is None or not prev or prev == latest:
                pred["latestRolledoutRevision"] = latest if percent is None or not prev else prev
                pred["traffic"] = [{"revisionName": latest, "latestRevision": True, "percent": 100}]
            else:
                pred["traffic"] = [{"revisionName": latest, "latestRevision": True, "percent": percent, "tag": "latest"},
                                   {"revisionName": prev, "latestRevision": False, "percent": 100 - percent, "tag": "prev"}]
            new["components"] = {"predictor": pred}
        return new

    def _route(self, obj: dict, gen: int) -> dict | None:
        parents = (obj.get("status") or {}).get("parents") or []
        if parents and all(c.get("observedGeneration") == gen for p in parents for c in p["conditions"]):
            return None
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conds = [{"type": t, "status": "True", "reason": t, "message": "", "observedGeneration": gen,
                  "lastTransitionTime": now} for t in ("Accepted", "ResolvedRefs")]
        return {"parents": [
            {"parentRef": ref, "controllerName": "example.net/stand-in-gateway", "conditions": conds}
            for ref in obj["spec"]["parentRefs"]]}
