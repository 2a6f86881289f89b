#!/usr/bin/env python3
"""Gather what kubectl-validate needs to check manifests offline, into one cache folder.

kubectl-validate runs the API server's own validation code (the OpenAPI schemas of the built-in
kinds with their formats and CEL rules, and, for custom resources, the CRD's structural schema,
defaulting, pruning and x-kubernetes-validations CEL rules) without a cluster. Offline it needs:

``OUT/schemas/``  the built-in kinds' OpenAPI v3 documents of one Kubernetes release, laid out
                  as kubectl-validate's ``--local-schemas`` wants (``api/v1.json``,
                  ``apis/<group>/<version>.json``). They come from ``api/openapi-spec/v3/`` of
                  the ``k8s.io/kubernetes`` module at that release, fetched with ``go mod
                  download`` (module proxy, checked against the checksum database).
                  kubectl-validate v0.0.4 ships schemas only up to 1.30, and otherwise asks
                  GitHub's API at run time: this keeps it offline and at the cluster's version.
``OUT/crds/``     the pinned upstream CRDs (KServe, Argo Workflows, Prometheus operator, Gateway
                  API), for ``--local-crds``: the same files, from ``../shared/crds`` or the
                  upstream release URLs, that ``crd2jsonschema.py crds`` converts for kubeconform.

Idempotent: a marker records what was gathered. Usage:
    kubectl_validate_inputs.py OUT_DIR --kubernetes v1.34.12
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crd2jsonschema  # noqa: E402

INPUTS_VERSION = "1"


class InputsError(RuntimeError):
    pass


def spec_target(name: str) -> Path | None:
    """``apis__apps__v1_openapi.json`` -> ``apis/apps/v1.json``; None for discovery documents."""
    if not name.endswith("_openapi.json"):
        return None
    parts = name[: -len("_openapi.json")].split("__")
    if len(parts) == 2 and parts[0] == "api":
        return Path("api") / f"{parts[1]}.json"
    if len(parts) == 3 and parts[0] == "apis":
        return Path("apis") / parts[1] / f"{parts[2]}.json"
    return None


def kubernetes_module_dir(version: str) -> Path:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    module = f"k8s.io/kubernetes@{version}"
    try:
        proc = subprocess.run([go, "mod", "download", "-json", module], capture_output=True,
                              text=True, timeout=900, cwd=tempfile.gettempdir())
    except FileNotFoundError as exc:
        raise InputsError("Go is needed to fetch the Kubernetes OpenAPI documents (go mod download)") from exc
    if proc.returncode != 0:
        raise InputsError(f"go mod download {module} failed:\n{proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"])


def build_schemas(out: Path, version: str) -> int:
    spec_dir = kubernetes_module_dir(version) / "api" / "openapi-spec" / "v3"
    count = 0
    for src in sorted(spec_dir.glob("*_openapi.json")):
        rel = spec_target(src.name)
        if rel is None:
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel)
        count += 1
    if count == 0:
        raise InputsError(f"no OpenAPI v3 documents under {spec_dir}")
    return count


def build_crds(out: Path, download_dir: Path) -> int:
    try:
        sources = crd2jsonschema.crd_sources(download_dir)
    except crd2jsonschema.SchemaError as exc:
        raise InputsError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    for src in sources:
        shutil.copyfile(src, out / src.name)
    return len(sources)


def build(out_dir: Path, version: str) -> None:
    marker = out_dir / ".built"
    want = (f"inputs={INPUTS_VERSION} kubernetes={version} crds={sorted(crd2jsonschema.PINNED_CRDS)} "
            f"{crd2jsonschema.GATEWAY_API_MODULE}")
    if marker.is_file() and marker.read_text() == want:
        return
    for sub in ("schemas", "crds"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_schemas = build_schemas(out_dir / "schemas", version)
    n_crds = build_crds(out_dir / "crds", out_dir / ".downloads")
    marker.write_text(want)
    print(f"kubectl_validate_inputs: {n_schemas} Kubernetes {version} OpenAPI documents and "
          f"{n_crds} CRD files in {out_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--kubernetes", default="v1.34.12",
                        help="k8s.io/kubernetes module version whose OpenAPI documents to use")
    args = parser.parse_args(argv)
    try:
        build(args.out_dir, args.kubernetes)
    except InputsError as exc:
        print(f"kubectl_validate_inputs: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
