#!/usr/bin/env python3
"""Rewrite an upstream install manifest into what `up.sh` applies, in one server-side apply.

Setting our options inside the manifest (instead of patching the live objects afterwards) keeps
`up.sh` re-runnable: one field manager owns every field, so the next apply has nothing to
conflict with (a client-side patch of `inferenceservice-config` made the next server-side
apply of kserve.yaml fail).

  render-upstream.py kserve kserve.yaml [--gateway NS/NAME]   > kserve-install.yaml
  render-upstream.py argo   install.yaml                      > argo-install.yaml

kserve: prepends the `kserve` Namespace (the v0.20 release manifest has none); Standard
  deployment mode; Gateway API ingress with KServe's own route creation off (the fissure chart
  makes the routes); a Pod Security `restricted` securityContext on the default
  ClusterStorageContainer, so the storage initializer KServe injects is admitted.
argo: the same securityContext for the executor (init and wait containers) in
  workflow-controller-configmap.

Only the documents that change are parsed (the CRDs are ~100k lines); the rest pass through.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
    if not args.manifest.is_file():
        parser.error(f"no such file: {args.manifest}")
    if not re.fullmatch(r"[a-z0-9-]+/[a-z0-9-]+", args.gateway):
        parser.error(f"--gateway must be NAMESPACE/NAME, got {args.gateway!r}")
    text = args.manifest.read_text()
    docs = kserve(text, args.gateway) if args.which == "kserve" else argo(text)
    sys.stdout.write("---\n".join(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
