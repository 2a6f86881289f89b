"""``fissure serve``: the KServe protocol front over TorchServe or the in-process runtime
(the container entrypoint)."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import click

from fissure.settings import LOOPBACK, PORTS, Settings, settings

RUNTIMES = typing.get_args(Settings.model_fields["runtime"].annotation)


def _port(name: str, env: str, default: int, help: str | None = None):
    return click.option(f"--{name}", envvar=env, type=click.IntRange(1, 65535), default=default,
                        show_default=True, show_envvar=True, help=help)


@click.command("serve")
@click.option("--model-store", type=click.Path(path_type=Path), required=True,
              help="Folder of .mar files (KServe layout: /mnt/models/model-store).")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="TorchServe config.properties written by `fissure package`.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="inprocess: the model runtime inside the front (no second hop, no Java); torchserve: "
                   "the MAR's handler in TorchServe workers [env FISSURE_RUNTIME; default inprocess].")
@click.option("--host", default=None, metavar="ADDRESS",
              help="Address for REST, gRPC and TorchServe metrics; 0.0.0.0 opens them to the network "
                   f"[env FISSURE_HOST; default {LOOPBACK}].")
@_port("http-port", "FISSURE_HTTP_PORT", PORTS["inference_rest"],
       "Inference REST (KServe v1 and v2) and the front's /metrics, on --host.")
@_port("grpc-port", "FISSURE_GRPC_PORT", PORTS["inference_grpc"], "Inference gRPC (KServe v2), on --host.")
@_port("ts-inference-port", "FISSURE_TS_INFERENCE_PORT", PORTS["torchserve_inference"], "TorchServe inference (loopback).")
@_port("ts-management-port", "FISSURE_TS_MANAGEMENT_PORT", PORTS["torchserve_management"], "TorchServe management (loopback).")
@_port("ts-metrics-port", "FISSURE_TS_METRICS_PORT", PORTS["torchserve_metrics"],
       "TorchServe Prometheus metrics, on --host.")
@_port("ts-grpc-inference-port", "FISSURE_TS_GRPC_INFERENCE_PORT", PORTS["torchserve_grpc_inference"],
       "TorchServe's own gRPC inference (loopback; unused, but TorchServe opens it).")
@_port("ts-grpc-management-port", "FISSURE_TS_GRPC_MANAGEMENT_PORT", PORTS["torchserve_grpc_management"],
       "TorchServe's own gRPC management (loopback; unused, but TorchServe opens it).")
@click.option("--workdir", type=click.Path(path_type=Path), default=None, envvar="FISSURE_SERVE_WORKDIR",
              help="TorchServe logs and temp files (default: a new temp folder).")
@click.option("--ready-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds to wait for TorchServe's workers.")
@click.option("--model", "models", multiple=True, help="Serve only these MARs (by name); default all.")
@click.option("--routing-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              envvar="FISSURE_ROUTING_FILE", show_envvar=True,
              help="Canary routing (JSON) to follow: a challenger version beside each champion and its share "
                   "of requests; written by `fissure promote --actuator local` (docs/retraining.md).")
def serve(model_store, config, runtime, host, http_port, grpc_port, ts_inference_port, ts_management_port,
          ts_metrics_port, ts_grpc_inference_port, ts_grpc_management_port, workdir, ready_timeout, models,
          routing_file):
    """Serve the MARs of MODEL_STORE over KServe v1/v2 REST and gRPC (loopback unless --host)."""
    from fissure.serving.serve import ServeOptions, serve as run
    from fissure.serving.torchserve import TorchServePorts

    opts = ServeOptions(
        model_store=model_store, config=config, runtime=runtime or settings().runtime,
        host=host or settings().host, http_port=http_port,
        grpc_port=grpc_port,
        ts_ports=TorchServePorts(inference=ts_inference_port, management=ts_management_port,
                                 metrics=ts_metrics_port, grpc_inference=ts_grpc_inference_port,
                                 grpc_management=ts_grpc_management_port),
        workdir=workdir, ready_timeout=ready_timeout, models=list(models), routing_file=routing_file,
    )
    code = run(opts)
    if code:
        sys.exit(code)
