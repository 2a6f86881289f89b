#!/usr/bin/env python3
"""Build the JSON schemas kubeconform needs, offline, into a cache folder.

Two jobs, both idempotent (a marker file records what was built and from what):

``crds``  Convert CustomResourceDefinitions to JSON Schema files named like kubeconform's
          ``openapi2jsonschema.py`` does: ``{kind}_{version}.json``, lower-cased, with
          ``additionalProperties: false`` added to every object that lists its properties
          (strict), except where the CRD says ``x-kubernetes-preserve-unknown-fields``.
          Sources, pinned: KServe v0.20.0, Argo Workflows v4.1.2, Prometheus operator
          v0.93.0 from ``../shared/crds`` when present, else from their upstream release
          URLs; Gateway API v1.2.1 (HTTPRoute, GRPCRoute, Gateway, ...) from the Go module
          proxy (``go mod download``), whose module source ships the CRDs.

``k8s``   Make self-contained copies of the Kubernetes schemas that the
          ``kubernetes-validate`` package ships (``vX.Y.0-local-strict``): each kind's
          schema refers to one shared ``/api/_definitions.json`` by an absolute URL that
          kubeconform cannot resolve offline, so we inline the definitions each kind uses.

Usage: crd2jsonschema.py crds OUT_DIR
       crd2jsonschema.py k8s OUT_DIR --version 1.33.0
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHARED_CRDS = Path(os.environ.get("FISSURE_SHARED_CRDS", REPO.parent / "shared" / "crds"))

GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api@v1.2.1"
GATEWAY_API_FILES = [
    "config/crd/standard/gateway.networking.k8s.io_gatewayclasses.yaml",
    "config/crd/standard/gateway.networking.k8s.io_gateways.yaml",
    "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
    "config/crd/standard/gateway.networking.k8s.io_grpcroutes.yaml",
    "config/crd/standard/gateway.networking.k8s.io_referencegrants.yaml",
]

# folder under ../shared/crds -> (upstream base URL at the pinned tag, file names)
PINNED_CRDS = {
    "kserve-v0.20.0": (
        "https://raw.githubusercontent.com/kserve/kserve/v0.20.0/config/crd/full",
        [
            "serving.kserve.io_inferenceservices.yaml",
            "serving.kserve.io_servingruntimes.yaml",
            "serving.kserve.io_clusterservingruntimes.yaml",
            "serving.kserve.io_inferencegraphs.yaml",
        ],
    ),
    "argo-workflows-v4.1.2": (
        "https://raw.githubusercontent.com/argoproj/argo-workflows/v4.1.2/manifests/base/crds/full",
        [
            "argoproj.io_workflows.yaml",
            "argoproj.io_workflowtemplates.yaml",
            "argoproj.io_cronworkflows.yaml",
            "argoproj.io_clusterworkflowtemplates.yaml",
            "argoproj.io_workfloweventbindings.yaml",
        ],
    ),
    "prometheus-operator-v0.93.0": (
        "https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/v0.93.0/example/prometheus-operator-crd-full",
        [
            "monitoring.coreos.com_podmonitors.yaml",
            "monitoring.coreos.com_servicemonitors.yaml",
            "monitoring.coreos.com_prometheusrules.yaml",
        ],
    ),
}

# Bump when the conversion changes, so cached output is rebuilt.
CONVERTER_VERSION = "3"


class SchemaError(RuntimeError):
    pass


# --------------------------------------------------------------------------- CRDs


def _strictify(node):
    """openapi2jsonschema-style conversion of one OpenAPI v3 (structural) schema node."""
    if isinstance(node, list):
        return [_strictify(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions", "$defs"):
            out[key] = {name: _strictify(sub) for name, sub in value.items()}
        else:
            out[key] = _strictify(value)
    # OpenAPI's nullable is not JSON Schema: widen the type instead.
    if out.pop("nullable", False) and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = types + ["null"]
    if out.get("format") == "int-or-string" or out.get("x-kubernetes-int-or-string"):
        if "type" not in out and "anyOf" not in out and "oneOf" not in out:
            out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    preserve = out.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def convert_crd(doc: dict, out_dir: Path) -> list[Path]:
    if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
        return []
    kind = doc["spec"]["names"]["kind"]
    group = doc["spec"]["group"]
    written = []
    for version in doc["spec"]["versions"]:
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if not schema:
            raise SchemaError(f"{kind} {version['name']}: the CRD has no openAPIV3Schema")
        schema = _strictify(copy.deepcopy(schema))
        props = schema.setdefault("properties", {})
        # Pin apiVersion and kind, like the Kubernetes schemas do.
        props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        path = out_dir / f"{kind}_{version['name']}.json".lower()
        path.write_text(json.dumps(schema, indent=1, sort_keys=True))
        written.append(path)
    return written


def _fetch(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (pinned https URLs)
            dest.write_bytes(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        raise SchemaError(
            f"cannot fetch {url} ({exc}).\n"
            "  ../shared/crds is absent, so the pinned CRDs come from upstream; this needs network "
            "access once (they are cached afterwards). Or set FISSURE_SHARED_CRDS to a folder "
            "holding kserve-v0.20.0/, argo-workflows-v4.1.2/ and prometheus-operator-v0.93.0/."
        ) from exc


def crd_sources(download_dir: Path) -> list[Path]:
    files = []
    for folder, (base, names) in PINNED_CRDS.items():
        local = SHARED_CRDS / folder
        for name in names:
            if (local / name).is_file():
                files.append(local / name)
                continue
            dest = download_dir / folder / name
            if not dest.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                _fetch(f"{base}/{name}", dest)
            files.append(dest)
    files.extend(gateway_api_crds())
    return files


def gateway_api_crds() -> list[Path]:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    try:
        proc = subprocess.run(
            [go, "mod", "download", "-json", GATEWAY_API_MODULE],
            capture_output=True, text=True, timeout=600, cwd=tempfile.gettempdir(),
        )
    except FileNotFoundError as exc:
        raise SchemaError("Go is needed to fetch the Gateway API CRDs (go mod download)") from exc
    if proc.returncode != 0:
        raise SchemaError(f"go mod download {GATEWAY_API_MODULE} failed:\n{proc.stdout}{proc.stderr}")
    module_dir = Path(json.loads(proc.stdout)["Dir"])
    return [module_dir / name for name in GATEWAY_API_FILES]


def build_crds(out_dir: Path) -> None:
    marker = out_dir / ".built"
    want = f"converter={CONVERTER_VERSION} {sorted(PINNED_CRDS)} {GATEWAY_API_MODULE}"
    if marker.is_file() and marker.read_text() == want:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for src in crd_sources(out_dir / ".downloads"):
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the Argo CRDs are 10 MB
        for doc in yaml.load_all(src.read_text(), Loader=loader):
            count += len(convert_crd(doc, out_dir))
    if count == 0:
        raise SchemaError("no CRD schema was converted")
    marker.write_text(want)
    print(f"crd2jsonschema: wrote {count} CRD schemas to {out_dir}")


# --------------------------------------------------------------------------- Kubernetes


def _refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and "#/$defs/" in ref:
            found.add(ref.split("#/$defs/", 1)[1])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _localize(node):
    if isinstance(node, dict):
        out = {k: _localize(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and "#/$defs/" in ref:
            out["$ref"] = "#/$defs/" + ref.split("#/$defs/", 1)[1]
        return out
    if isinstance(node, list):
        return [_localize(v) for v in node]
    return node


def kubernetes_schema_dir(version: str) -> Path:
    import kubernetes_validate

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    path = base / f"v{version}-local-strict"
    if not path.is_dir():
        have = sorted(p.name for p in base.iterdir())
        raise SchemaError(f"kubernetes-validate has no schemas for {version}; it has {have}")
    return path


def build_k8s(out_dir: Path, version: str) -> None:
    src = kubernetes_schema_dir(version)
    marker = out_dir / ".built"
    want = f"converter={CONVERTER_VERSION} source={src}"
    if marker.is_file() and marker.read_text() == want:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    defs = json.loads((src / "_definitions.json").read_text())["$defs"]
    count = 0
    for path in sorted(src.glob("*.json")):
        if path.name.startswith("_") or path.name == "all.json":
            continue
        schema = json.loads(path.read_text())
        kind_prop = schema.get("properties", {}).get("kind", {})
        if "enum" not in kind_prop:  # not a top-level resource
            continue
        needed: set[str] = set()
        _refs(schema, needed)
        queue = list(needed)
        while queue:
            name = queue.pop()
            more: set[str] = set()
            _refs(defs[name], more)
            for extra in more - needed:
                needed.add(extra)
                queue.append(extra)
        bundled = _localize(schema)
        bundled.pop("$id", None)
        if needed:
            bundled["$defs"] = {name: _localize(defs[name]) for name in sorted(needed)}
        (out_dir / path.name).write_text(json.dumps(bundled, separators=(",", ":")))
        count += 1
    marker.write_text(want)
    print(f"crd2jsonschema: wrote {count} Kubernetes {version} schemas to {out_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=["crds", "k8s"])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--version", default="1.33.0", help="Kubernetes version for `k8s`")
    args = parser.parse_args(argv)
    try:
        if args.job == "crds":
            build_crds(args.out_dir)
        else:
            build_k8s(args.out_dir, args.version)
    except SchemaError as exc:
        print(f"crd2jsonschema: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
