#!/usr/bin/env python3
"""Write a one-layer OCI image archive from local files, for `ctr images import`.

No registry is reachable here, so the cluster's own small images (the pod sandbox's `pause`)
are assembled from binaries built on this machine: a tar layer, an image config, a manifest
and an index, as the OCI image-layout spec lays them out.

  oci-image.py --name fissure.local/pause:3.10 --file /tmp/pause:/pause --entrypoint /pause out.tar
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def _blob(tar: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}", len(data)


def _layer(files: list[tuple[Path, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for src, dest in files:
            info = layer.gettarinfo(str(src), arcname=dest.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0  # reproducible: the same binary gives the same image id
            with open(src, "rb") as f:
                layer.addfile(info, f)
    return buf.getvalue()


def build(name: str, files: list[tuple[Path, str]], entrypoint: list[str], user: str, out: Path) -> None:
    layer = _layer(files)
    with tarfile.open(out, "w") as tar:
        layer_digest, layer_size = _blob(tar, layer)
        config = {
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": entrypoint, "User": user, "Env": ["PATH=/"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
        config_digest, config_size = _blob(tar, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}],
        }
        manifest_digest, manifest_size = _blob(tar, json.dumps(manifest).encode())
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
        }]}
        for fname, data in (("index.json", json.dumps(index).encode()),
                            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="image reference, e.g. fissure.local/pause:3.10")
    parser.add_argument("--file", action="append", required=True, metavar="SRC:DEST",
                        help="a local file and its path in the image (repeatable)")
    parser.add_argument("--entrypoint", required=True, help="the image's entrypoint (one path)")
    parser.add_argument("--user", default="65535:65535", help="default user (default: %(default)s)")
    parser.add_argument("out", type=Path, help="the archive to write")
    args = parser.parse_args(argv)
    files = []
    for spec in args.file:
        src, sep, dest = spec.partition(":")
        if not sep or not dest.startswith("/"):
            parser.error(f"--file wants SRC:/DEST, got {spec!r}")
        if not Path(src).is_file():
            parser.error(f"no such file: {src}")
        files.append((Path(src), dest))
    build(args.name, files, [args.entrypoint], args.user, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
