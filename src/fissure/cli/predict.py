"""``fissure predict``: send an image to a running server and print the prediction."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("predict")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "models", multiple=True,
              help="Model name (repeatable); default: every model the server lists.")
@click.option("--url", default=None, help="REST base URL [env FISSURE_URL; default http://127.0.0.1:8080].")
@click.option("--grpc-url", default=None, help="gRPC host:port [env FISSURE_GRPC_URL; default 127.0.0.1:8081].")
@click.option("--grpc-authority", default=None,
              help="gRPC :authority to send, for gateways that route by host "
                   "(e.g. crack-segmenter.grpc.example.com) [env FISSURE_GRPC_AUTHORITY].")
@click.option("--protocol", type=click.Choice(["v1", "v2", "grpc"]), default="v2", show_default=True,
              help="KServe v1 REST, Open Inference Protocol v2 REST, or v2 gRPC (--grpc-url).")
@click.option("--explain", is_flag=True, help="Grad-CAM (classifier) / probability map (segmenter).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw result as JSON.")
@click.option("--save-mask", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the mask (or, with --explain, the heatmap) PNG here.")
@click.option("--save-overlay", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the image with the mask (or heatmap) painted over it.")
def predict(image, models, url, grpc_url, grpc_authority, protocol, explain, as_json, save_mask, save_overlay):
    """Classify or segment IMAGE with the served models."""
    from fissure.serving import client, codec

    url = url or client.DEFAULT_URL
    grpc_url = grpc_url or client.DEFAULT_GRPC
    data = image.read_bytes()
    names = list(models) or client.list_models(url)
    results = []
    for name in names:
        res = client.predict(data, name, url=url, protocol=protocol, explain=explain, grpc_url=grpc_url,
                             grpc_authority=grpc_authority or client.DEFAULT_GRPC_AUTHORITY)
        results.append(res)
        picture = res.get("heatmap_png") or res.get("mask_png")
        if picture and (save_mask or save_overlay):
            _save(image, picture, save_mask, save_overlay, len(names) > 1, name, codec)
        if not as_json:
            click.echo(client.describe(res))
    if as_json:
        click.echo(json.dumps(results[0] if len(results) == 1 else results, indent=2))


def _save(image, picture_b64, save_mask, save_overlay, several, name, codec):
    from fissure.preprocess import decode_image

    png = codec.b64decode(picture_b64)
    if save_mask:
        path = save_mask.with_name(f"{save_mask.stem}-{name}{save_mask.suffix}") if several else save_mask
        path.write_bytes(png)
        click.echo(f"wrote {path}")
    if save_overlay:
        path = save_overlay.with_name(f"{save_overlay.stem}-{name}{save_overlay.suffix}") if several else save_overlay
        base = decode_image(image.read_bytes())
        import numpy as np

        # the server's PNG is decoded under the same pixel limit as any image
        values = np.asarray(decode_image(png).convert("L").resize(base.size), dtype=np.float32) / 255.0
        codec.overlay(base, values).save(path)
        click.echo(f"wrote {path}")
