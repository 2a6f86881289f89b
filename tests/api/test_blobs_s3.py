"""Blobs on s3:// in a real MinIO server, reached through the variables the chart gives the API
pod (charts/fissure/templates/api.yaml): AWS_ENDPOINT_URL and FSSPEC_S3_ENDPOINT_URL for the
endpoint, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the credentials.

The blob operations themselves run on both backends in test_store.py (the `blob_url` fixture)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import pytest


def test_feedback_with_a_corrected_mask_then_export_on_minio(make_client, s3_env, make_prediction, images, tmp_path):
    prefix = f"{s3_env.bucket}/{tmp_path.name}"
    client = make_client(blob_url=f"s3://{prefix}")
    seg = make_prediction(client.store, task="segment")
    corrected = images.mask(rows=slice(0, 2))
    r = client.post(f"/predictions/{seg.id}/feedback", role="annotator", data={"verdict": "wrong"},
                    files={"mask": ("m.png", corrected, "image/png")})
    assert r.status_code == 200, r.text
    mask_sha = r.json()["mask_sha256"]

    # every blob is in the bucket, once, under its sha256, and nothing went to a local folder
    bucket = s3_env.fs()
    stored = {path.rsplit("/", 1)[-1]: path for path in bucket.find(prefix)}
    assert set(stored) == {seg.image_sha256, seg.mask_sha256, mask_sha}
    assert bucket.cat_file(stored[seg.image_sha256]) == images.png()
    assert not (tmp_path / "blobs").exists()

    assert client.get(f"/predictions/{seg.id}/image").content == images.png()
    assert client.get(f"/feedback/{r.json()['id']}/mask").content == bucket.cat_file(stored[mask_sha])

    export = client.get("/feedback/export", role="annotator")
    assert export.status_code == 200
    zf = zipfile.ZipFile(io.BytesIO(export.content))
    [item] = json.loads(zf.read("manifest.json"))["items"]
    assert item["prediction_id"] == seg.id
    assert zf.read(item["path"]) == images.png()
    assert zf.read(item["mask"]) == bucket.cat_file(stored[mask_sha]) != images.mask()  # the corrected one


_PUT = """
import sys
from fissure.api.blobs import Blobs
blobs = Blobs(sys.argv[1])
digest = blobs.put(b"written by a fresh process")
assert blobs.get(digest) == b"written by a fresh process"
print(digest)
"""


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"])
def test_either_endpoint_variable_of_the_chart_reaches_minio(minio, variable, tmp_path):
    """Each of the chart's endpoint variables suffices on its own, set as a pod sets them: before
    the process starts (fsspec reads FSSPEC_* once, at import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    env.update({variable: minio.endpoint, "AWS_ACCESS_KEY_ID": minio.user, "AWS_SECRET_ACCESS_KEY": minio.password})
    prefix = f"{minio.bucket}/{tmp_path.name}"
    done = subprocess.run([sys.executable, "-c", _PUT, f"s3://{prefix}"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    digest = done.stdout.strip()
    assert minio.fs().cat_file(f"{prefix}/{digest[:2]}/{digest}") == b"written by a fresh process"
