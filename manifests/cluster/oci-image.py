#!/usr/bin/env python3
"""Write an OCI image archive from local files or layer tarballs, for `ctr images import`.

No registry is reachable here, so the cluster's images (the pod sandbox's `pause`, KServe's
controller, fissure's serving image) are assembled from what is built on this machine: tar
layers, an image config, a manifest and an index, as the OCI image-layout spec lays them out.
Layers are uncompressed tars (their digest is their diff id) and are streamed, never held in
memory, so a multi-GB layer (a Python environment with torch) is fine. `--omit-blobs` leaves out
the layers the runtime's content store already holds (`ctr content ls -q`): containerd's import
writes what the archive carries and unpacks from its store, so re-importing the serving image
after a change to fissure's code streams the small app layer, not the 5 GB beneath it.

  oci-image.py --name fissure.local/pause:3.10 --file /tmp/pause:/pause --entrypoint /pause out.tar
  oci-image.py --name ghcr.io/fissure/fissure-serving:0.1.0 --layer base.tar --layer venv.tar \\
      --entrypoint '["fissure"]' --cmd '["serve"]' --env PATH=/opt/venv/bin:/usr/bin --user 1000:1000 - \\
      | ctr -n k8s.io images import -
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def _add(tar: tarfile.TarFile, name: str, size: int, fileobj: BinaryIO) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    tar.addfile(info, fileobj)


def _blob(tar: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    _add(tar, f"blobs/sha256/{digest}", len(data), io.BytesIO(data))
    return f"sha256:{digest}", len(data)


def file_digest(path: Path) -> str:
    """sha256 of a layer file; cached beside it as PATH.sha256 (keyed by size and mtime)."""
    stat = path.stat()
    key = f"{stat.st_size} {stat.st_mtime_ns}"
    cache = path.with_name(path.name + ".sha256")
    if cache.is_file():
        cached_key, _, digest = cache.read_text().strip().rpartition(" ")
        if cached_key == key:
            return digest
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = f"sha256:{h.hexdigest()}"
    try:
        cache.write_text(f"{key} {digest}\n")
    except OSError:
        pass
    return digest


def files_layer(files: list[tuple[Path, str]]) -> bytes:
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


def _plan(files, layers, entrypoint, cmd, user, env, workdir):
    """The layers' descriptors, the config and the manifest: everything but the layer bytes."""
    descriptors = [(file_digest(path), path.stat().st_size, path) for path in layers]
    extra = files_layer(files) if files else None
    if extra is not None:
        descriptors.append((f"sha256:{hashlib.sha256(extra).hexdigest()}", len(extra), extra))
    if not descriptors:
        raise ValueError("an image needs at least one --file or --layer")
    conf: dict = {"Env": list(env) or ["PATH=/"]}
    if entrypoint:
        conf["Entrypoint"] = entrypoint
    if cmd:
        conf["Cmd"] = cmd
    if user:
        conf["User"] = user
    if workdir:
        conf["WorkingDir"] = workdir
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": conf,
        "rootfs": {"type": "layers", "diff_ids": [d for d, _, _ in descriptors]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{hashlib.sha256(config).hexdigest()}", "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}
                   for d, s, _ in descriptors],
    }).encode()
    return descriptors, config, manifest


def manifest_digest(**kwargs) -> str:
    """The digest the image will have in containerd (its manifest's), without writing it."""
    _, _, manifest = _plan(**kwargs)
    return f"sha256:{hashlib.sha256(manifest).hexdigest()}"


def build(name: str, out: BinaryIO, *, files: list[tuple[Path, str]] = (), layers: list[Path] = (),
          entrypoint: list[str] | None = None, cmd: list[str] | None = None, user: str = "",
          env: list[str] = (), workdir: str = "", omit: frozenset[str] = frozenset()) -> str:
    """Write the archive to `out`, without the layers whose digests are in `omit`; return the
    manifest's digest. (The config, manifest and index are always written.)"""
    descriptors, config, manifest = _plan(files, layers, entrypoint, cmd, user, env, workdir)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for digest, size, source in descriptors:
            if digest in omit:
                continue
            name_in_tar = f"blobs/sha256/{digest.removeprefix('sha256:')}"
            if isinstance(source, bytes):
                _add(tar, name_in_tar, size, io.BytesIO(source))
            else:
                with open(source, "rb") as f:
                    _add(tar, name_in_tar, size, f)
        _blob(tar, config)
        manifest_digest_, manifest_size = _blob(tar, manifest)
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest_, "size": manifest_size,
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
        }]}
        for fname, data in (("index.json", json.dumps(index).encode()),
                            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')):
            _add(tar, fname, len(data), io.BytesIO(data))
    return manifest_digest_


def _command(text: str) -> list[str]:
    """A JSON list (exec form, as in a Dockerfile) or one plain word."""
    if text.startswith("["):
        value = json.loads(text)
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise ValueError(f"not a JSON list of strings: {text}")
        return value
    return [text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="image reference, e.g. fissure.local/pause:3.10")
    parser.add_argument("--file", action="append", default=[], metavar="SRC:DEST",
                        help="a local file and its path in the image, in one last layer (repeatable)")
    parser.add_argument("--layer", action="append", default=[], type=Path, metavar="TAR",
                        help="an uncompressed layer tarball, bottom first (repeatable)")
    parser.add_argument("--entrypoint", help="the entrypoint: one path, or a JSON list")
    parser.add_argument("--cmd", help="the default arguments: a JSON list")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="environment (repeatable)")
    parser.add_argument("--workdir", default="", help="working directory")
    parser.add_argument("--user", default="65535:65535", help="default user (default: %(default)s)")
    parser.add_argument("--omit-blobs", type=Path, metavar="FILE",
                        help="a file of digests (sha256:..., one per line, e.g. `ctr content ls -q`) "
                             "whose layers the runtime already has: left out of the archive")
    parser.add_argument("--digest", action="store_true",
                        help="only print the manifest digest the image would have (writes nothing)")
    parser.add_argument("out", help="the archive to write, or - for standard output")
    args = parser.parse_args(argv)
    files = []
    for spec in args.file:
        src, sep, dest = spec.partition(":")
        if not sep or not dest.startswith("/"):
            parser.error(f"--file wants SRC:/DEST, got {spec!r}")
        if not Path(src).is_file():
            parser.error(f"no such file: {src}")
        files.append((Path(src), dest))
    for layer in args.layer:
        if not layer.is_file():
            parser.error(f"no such layer: {layer}")
    if not files and not args.layer:
        parser.error("give at least one --file or --layer")
    for env in args.env:
        if "=" not in env:
            parser.error(f"--env wants K=V, got {env!r}")
    try:
        entrypoint = _command(args.entrypoint) if args.entrypoint else None
        cmd = _command(args.cmd) if args.cmd else None
    except ValueError as e:
        parser.error(str(e))
    kwargs = dict(files=files, layers=args.layer, entrypoint=entrypoint, cmd=cmd, user=args.user,
                  env=args.env, workdir=args.workdir)
    if args.omit_blobs and not args.omit_blobs.is_file():
        parser.error(f"no such file: {args.omit_blobs}")
    if args.digest:
        print(manifest_digest(**kwargs))
        return 0
    omit = frozenset(args.omit_blobs.read_text().split()) if args.omit_blobs else frozenset()
    if args.out == "-":
        build(args.name, sys.stdout.buffer, omit=omit, **kwargs)
    else:
        tmp = Path(args.out + ".tmp")
        with open(tmp, "wb") as f:
            build(args.name, f, omit=omit, **kwargs)
        shutil.move(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
