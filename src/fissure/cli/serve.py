"""``fissure serve``: TorchServe + the KServe protocol front (the container entrypoint)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fissure.settings import PORTS


def _port(name: str, env: str, default: int):
    return click.option(f"--{name}", envvar=env, type=int, default=default, show_default=True,
                        show_envvar=True)


@click.command("serve")
@click.option("--model-store", type=click.Path(path_type=Path), required=True,
              help="Folder of .mar files (KServe layout: /mnt/models/model-store).")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="TorchServe config.properties written by `fissure package`.")
@_port("http-port", "FISSURE_HTTP_PORT", PORTS["inference_rest"])
@_port("grpc-port", "FISSURE_GRPC_PORT", PORTS["inference_grpc"])
@_port("ts-inference-port", "FISSURE_TS_INFERENCE_PORT", 8083)
@_port("ts-management-port", "FISSURE_TS_MANAGEMENT_PORT", PORTS["torchserve_management"])
@_port("ts-metrics-port", "FISSURE_TS_METRICS_PORT", PORTS["torchserve_metrics"])
@_port("ts-grpc-inference-port", "FISSURE_TS_GRPC_INFERENCE_PORT", 7070)
@_port("ts-grpc-management-port", "FISSURE_TS_GRPC_MANAGEMENT_PORT", 7071)
@click.option("--workdir", type=click.Path(path_type=Path), default=None, envvar="FISSURE_SERVE_WORKDIR",
              help="TorchServe logs and temp files (default: a new temp folder).")
@click.option("--ready-timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for TorchServe's workers.")
@click.option("--model", "models", multiple=True, help="Serve only these MARs (by name); default all.")
def serve(model_store, config, http_port, grpc_port, ts_inference_port, ts_management_port,
          ts_metrics_port, ts_grpc_inference_port, ts_grpc_management_port, workdir, ready_timeout, models):
    """Run TorchServe on loopback and the KServe v1/v2 front on REST and gRPC."""
    from fissure.serving.server import ServeOptions, serve as run

    opts = ServeOptions(
        model_store=model_store, config=config, http_port=http_port, grpc_port=grpc_port,
        ts_inference_port=ts_inference_port, ts_management_port=ts_management_port,
        ts_metrics_port=ts_metrics_port, ts_grpc_inference_port=ts_grpc_inference_port,
        ts_grpc_management_port=ts_grpc_management_port, workdir=workdir,
        ready_timeout=ready_timeout, models=list(models),
    )
    code = run(opts)
    if code:
        sys.exit(code)
