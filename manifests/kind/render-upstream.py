#!/usr/bin/env python3
"""Rewrite an upstream install manifest into what `up.sh` applies, in one server-side apply.

Setting our options inside the manifest (instead of patching the live objects afterwards) keeps
`up.sh` re-runnable: one field manager owns every field, so the next apply has nothing to
conflict with (a client-side patch of `inferenceservice-config` made the next server-side
apply of kserve.yaml fail).

  render-upstream.py kserve kserve.yaml [--gateway NS/NAME]   > kserve-install.yaml
  render-upstream.py kserve kserve.yaml --controller-image IMG --webhook-certs DIR  (no cert-manager)
                     [--llmisvc-image IMG] [--storage-initializer-image IMG]
  render-upstream.py argo   install.yaml                      > argo-install.yaml

kserve: prepends the `kserve` Namespace (the v0.20 release manifest has none); Standard
  deployment mode; Gateway API ingress with KServe's own route creation off (the fissure chart
  makes the routes); a Pod Security `restricted` securityContext on the default
  ClusterStorageContainer, so the storage initializer KServe injects is admitted.
  With --controller-image (the single-node cluster of `make cluster-up`, where every image is
  built locally): only KServe's main controller runs, from IMG with imagePullPolicy Never and
  without its kube-rbac-proxy sidecar; the localmodel controllers and their webhook
  configurations are dropped (their images are not built here), and so is the llmisvc controller
  unless --llmisvc-image IMG names its image (then it runs from IMG, asking for less CPU: a
  two-core node). With --webhook-certs DIR (ca.crt, and tls.crt and tls.key valid for both
  webhook Services: see manifests/cluster/kserve-up.sh): no cert-manager either, the
  Certificates and the Issuer are dropped, the webhooks' Secrets are written from DIR and the
  CA bundle set on the webhook configurations and on the llmisvc CRDs' conversion webhooks
  (their v1alpha1 API is served through it). With --storage-initializer-image IMG: the
  `default` ClusterStorageContainer and inferenceservice-config's storageInitializer use IMG.
argo: the same securityContext for the executor (init and wait containers) in
  workflow-controller-configmap.

Only the documents that change are parsed (the CRDs are ~100k lines); the rest pass through.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from pathlib import Path

import yaml

# What Pod Security `restricted` requires of every container; the uids are the images' own
# users (kserve/storage-initializer: 1000, quay.io/argoproj/argoexec: 8737).
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
STORAGE_INITIALIZER_UID = 1000
ARGO_EXECUTOR_UID = 8737

DOC_SPLIT = re.compile(r"^---[ \t]*$", re.M)


def _documents(text: str) -> list[str]:
    return [d for d in DOC_SPLIT.split(text) if d.strip()]


def _is(doc: str, kind: str, name: str) -> bool:
    return (re.search(rf"^kind: {re.escape(kind)}\s*$", doc, re.M) is not None
            and re.search(rf"^  name: {re.escape(name)}\s*$", doc, re.M) is not None)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMaps' JSON and YAML values) as readable `|` blocks."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def _dump(obj: dict) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=1000)


def _rewrite(text: str, edits: dict[tuple[str, str], object]) -> list[str]:
    """Apply each edit (kind, name) -> fn(obj) to its document; fail if one is not found."""
    out, seen = [], set()
    for doc in _documents(text):
        for (kind, name), edit in edits.items():
            if _is(doc, kind, name):
                obj = yaml.safe_load(doc)
                edit(obj)
                doc = _dump(obj)
                seen.add((kind, name))
                break
        out.append(doc.strip("\n") + "\n")
    missing = [f"{k}/{n}" for (k, n) in edits if (k, n) not in seen]
    if missing:
        raise SystemExit(f"render-upstream: not found in the manifest: {', '.join(missing)}")
    return out


CONTROLLER = "kserve-controller-manager"
WEBHOOK_SERVICE = "kserve-webhook-server-service"
WEBHOOK_SECRET = "kserve-webhook-server-cert"
LLMISVC = "llmisvc-controller-manager"
LLMISVC_WEBHOOK_SERVICE = "llmisvc-webhook-server-service"
LLMISVC_WEBHOOK_SECRET = "llmisvc-webhook-server-cert"
# upstream asks 100m; the node's two cores are shared by the tests' pods (a gate step waited
# 40 min for CPU once), and an idle controller uses a few millicores
LLMISVC_CPU_REQUEST = "20m"
# what --controller-image drops: the controllers whose images are not built here, and their webhooks
OTHER_CONTROLLERS = {("Deployment", LLMISVC),
                     ("Deployment", "kserve-localmodel-controller-manager"),
                     ("DaemonSet", "kserve-localmodelnode-agent")}
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}


def _kind_name(doc: str) -> tuple[str, str]:
    kind = re.search(r"^kind: (\S+)\s*$", doc, re.M)
    name = re.search(r"^  name: (\S+)\s*$", doc, re.M)
    return (kind.group(1) if kind else "", name.group(1) if name else "")


def _webhook_services(doc: str) -> set[str]:
    return set(re.findall(r"^\s+service:\s*\n\s+name: (\S+)", doc, re.M))


def kserve_local(docs: list[str], controller_image: str | None, certs: Path | None,
                 storage_initializer_image: str | None = None, llmisvc_image: str | None = None) -> list[str]:
    """Keep only what runs on a cluster without registry or cert-manager (see the module doc)."""
    out = []
    ca = (certs / "ca.crt").read_bytes() if certs else None
    ca_b64 = base64.b64encode(ca).decode() if ca else None
    ours = {WEBHOOK_SERVICE} | ({LLMISVC_WEBHOOK_SERVICE} if llmisvc_image else set())
    for doc in docs:
        kind, name = _kind_name(doc)
        if storage_initializer_image and (kind, name) == ("ClusterStorageContainer", "default"):
            obj = yaml.safe_load(doc)
            obj["spec"]["container"].update(image=storage_initializer_image, imagePullPolicy="Never")
            doc = _dump(obj)
        if storage_initializer_image and (kind, name) == ("ConfigMap", "inferenceservice-config"):
            obj = yaml.safe_load(doc)
            initializer = json.loads(obj["data"]["storageInitializer"])
            initializer["image"] = storage_initializer_image
            obj["data"]["storageInitializer"] = json.dumps(initializer, indent=2)
            doc = _dump(obj)
        if llmisvc_image and (kind, name) == ("Deployment", LLMISVC):
            obj = yaml.safe_load(doc)
            (container,) = obj["spec"]["template"]["spec"]["containers"]
            container.update(image=llmisvc_image, imagePullPolicy="Never")
            container["resources"]["requests"]["cpu"] = LLMISVC_CPU_REQUEST
            doc = _dump(obj)
        elif controller_image:
            if (kind, name) in OTHER_CONTROLLERS:
                continue
            if kind.endswith("WebhookConfiguration") and _webhook_services(doc) - ours:
                continue
            if kind == "Deployment" and name == CONTROLLER:
                obj = yaml.safe_load(doc)
                spec = obj["spec"]["template"]["spec"]
                spec["containers"] = [c for c in spec["containers"] if c["name"] == "manager"]
                spec["containers"][0].update(image=controller_image, imagePullPolicy="Never")
                doc = _dump(obj)
        if certs:
            if kind in CERT_MANAGER_KINDS and "cert-manager.io/" in doc:
                continue
            if kind.endswith("WebhookConfiguration") and _webhook_services(doc) & ours:
                obj = yaml.safe_load(doc)
                obj["metadata"].get("annotations", {}).pop("cert-manager.io/inject-ca-from", None)
                for hook in obj["webhooks"]:
                    hook["clientConfig"]["caBundle"] = ca_b64
                doc = _dump(obj)
            if kind == "CustomResourceDefinition" and llmisvc_image and _conversion_service(doc) == LLMISVC_WEBHOOK_SERVICE:
                doc = _conversion_ca(doc, ca_b64)
        out.append(doc)
    if certs:
        tls = {"tls.crt": base64.b64encode((certs / "tls.crt").read_bytes()).decode(),
               "tls.key": base64.b64encode((certs / "tls.key").read_bytes()).decode(), "ca.crt": ca_b64}
        for secret in [WEBHOOK_SECRET] + ([LLMISVC_WEBHOOK_SECRET] if llmisvc_image else []):
            out.append(_dump({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                              "metadata": {"name": secret, "namespace": "kserve"}, "data": tls}))
    return out


# A CRD's conversion webhook, edited as text: the llmisvc CRDs are ~40k lines each, too slow to
# parse and dump for two fields.
_CONVERSION = re.compile(r"^  conversion:\n    strategy: Webhook\n    webhook:\n      clientConfig:\n"
                         r"        service:\n          name: (\S+)\n", re.M)


def _conversion_service(doc: str) -> str | None:
    found = _CONVERSION.search(doc)
    return found.group(1) if found else None


def _conversion_ca(doc: str, ca_b64: str) -> str:
    doc = re.sub(r"^    cert-manager\.io/inject-ca-from: \S+\n", "", doc, count=1, flags=re.M)
    return _CONVERSION.sub(lambda m: m.group(0).replace("      clientConfig:\n",
                                                        f"      clientConfig:\n        caBundle: {ca_b64}\n"), doc)


def kserve(text: str, gateway: str) -> list[str]:
    def config(cm: dict) -> None:
        data = cm["data"]
        deploy = json.loads(data.get("deploy", "{}"))
        deploy["defaultDeploymentMode"] = "Standard"
        ingress = json.loads(data.get("ingress", "{}"))
        ingress.update({"enableGatewayApi": True, "kserveIngressGateway": gateway,
                        "disableIngressCreation": True})
        data["deploy"] = json.dumps(deploy, indent=2)
        data["ingress"] = json.dumps(ingress, indent=2)

    def storage_container(csc: dict) -> None:
        csc["spec"]["container"]["securityContext"] = {**RESTRICTED, "runAsUser": STORAGE_INITIALIZER_UID}

    namespace = _dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kserve"}})
    return [namespace, *_rewrite(text, {
        ("ConfigMap", "inferenceservice-config"): config,
        ("ClusterStorageContainer", "default"): storage_container,
    })]


def argo(text: str) -> list[str]:
    def config(cm: dict) -> None:
        executor = {"securityContext": {**RESTRICTED, "runAsUser": ARGO_EXECUTOR_UID}}
        cm.setdefault("data", {})
        cm["data"] = cm["data"] or {}
        cm["data"]["executor"] = _dump(executor)

    return _rewrite(text, {("ConfigMap", "workflow-controller-configmap"): config})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["kserve", "argo"], help="which upstream manifest")
    parser.add_argument("manifest", type=Path, help="the upstream install manifest (a file)")
    parser.add_argument("--gateway", default="fissure-gateway/fissure-gateway",
                        help="KServe's Gateway as NAMESPACE/NAME (default: %(default)s)")
    parser.add_argument("--controller-image", metavar="IMG",
                        help="kserve: run only KServe's main controller, from IMG (pullPolicy Never)")
    parser.add_argument("--llmisvc-image", metavar="IMG",
                        help="kserve: with --controller-image, also run the llmisvc controller, from IMG")
    parser.add_argument("--storage-initializer-image", metavar="IMG",
                        help="kserve: the storage initializer KServe injects, from IMG (pullPolicy Never)")
    parser.add_argument("--webhook-certs", type=Path, metavar="DIR",
                        help="kserve: the webhook's ca.crt, tls.crt and tls.key instead of cert-manager")
    args = parser.parse_args(argv)
    if not args.manifest.is_file():
        parser.error(f"no such file: {args.manifest}")
    local = args.controller_image or args.webhook_certs or args.storage_initializer_image or args.llmisvc_image
    if args.which != "kserve" and local:
        parser.error("--controller-image, --llmisvc-image, --storage-initializer-image and --webhook-certs are for kserve")
    if args.llmisvc_image and not args.controller_image:
        parser.error("--llmisvc-image goes with --controller-image")
    if args.webhook_certs:
        missing = [f for f in ("ca.crt", "tls.crt", "tls.key") if not (args.webhook_certs / f).is_file()]
        if missing:
            parser.error(f"--webhook-certs {args.webhook_certs}: missing {', '.join(missing)}")
    if not re.fullmatch(r"[a-z0-9-]+/[a-z0-9-]+", args.gateway):
        parser.error(f"--gateway must be NAMESPACE/NAME, got {args.gateway!r}")
    text = args.manifest.read_text()
    docs = kserve(text, args.gateway) if args.which == "kserve" else argo(text)
    if local:
        docs = kserve_local(docs, args.controller_image, args.webhook_certs, args.storage_initializer_image,
                            args.llmisvc_image)
    sys.stdout.write("---\n".join(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
