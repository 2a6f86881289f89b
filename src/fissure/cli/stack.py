"""``fissure up`` / ``fissure down``: the local stack (MLflow + serving) under honcho."""

from __future__ import annotations

import sys
import typing

import click

from fissure.settings import LOOPBACK, PORTS, Settings

RUNTIMES = typing.get_args(Settings.model_fields["runtime"].annotation)


@click.command("up")
@click.option("--detach", "-d", is_flag=True, help="Run in the background; `fissure down` stops it.")
@click.option("--host", default=None, metavar="ADDRESS",
              help=f"Address REST, gRPC, TorchServe metrics, MLflow, the API and Prometheus listen on (env FISSURE_HOST; "
                   f"default {LOOPBACK}). 0.0.0.0 opens the stack to the network.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="Model runtime behind the KServe front (env FISSURE_RUNTIME; default inprocess).")
@click.option("--http-port", type=int, envvar="FISSURE_HTTP_PORT", default=PORTS["inference_rest"], show_default=True,
              help="Inference REST: KServe v1 and Open Inference Protocol v2, and /metrics.")
@click.option("--grpc-port", type=int, envvar="FISSURE_GRPC_PORT", default=PORTS["inference_grpc"], show_default=True,
              help="Inference gRPC (Open Inference Protocol v2).")
@click.option("--mlflow-port", type=int, envvar="FISSURE_MLFLOW_PORT", default=PORTS["mlflow"], show_default=True,
              help="The MLflow tracking server and model registry UI.")
@click.option("--api-port", type=int, envvar="FISSURE_API_PORT", default=PORTS["api"], show_default=True,
              help="The feedback API and web UI.")
@click.option("--prometheus-port", type=int, envvar="FISSURE_PROMETHEUS_PORT", default=PORTS["prometheus"],
              show_default=True, help="Prometheus (when installed: `make prometheus`), scraping the stack every 5 s.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="TorchServe batch size when packaging.")
@click.option("--max-batch-delay", type=int, default=10, show_default=True, help="Milliseconds to fill a batch.")
def up(detach, host, runtime, http_port, grpc_port, mlflow_port, api_port, prometheus_port, batch_size,
       max_batch_delay):
    """Train if needed (dvc repro), package both champions, serve them with MLflow and the feedback UI alongside."""
    from fissure.settings import settings
    from fissure.stack import StackOptions, up as run

    if host is not None and not host.strip():
        raise click.BadParameter("an address is needed (127.0.0.1, 0.0.0.0, ...)", param_hint="--host")
    opts = StackOptions(http_port=http_port, grpc_port=grpc_port, mlflow_port=mlflow_port, api_port=api_port,
                        prometheus_port=prometheus_port,
                        host=host or settings().host, runtime=runtime or settings().runtime,
                        batch_size=batch_size, max_batch_delay=max_batch_delay)
    code = run(opts, detach=detach, echo=click.echo, live=sys.stdout.isatty())
    if code:
        sys.exit(code)


@click.command("down")
def down():
    """Stop a stack started with `fissure up --detach`."""
    from fissure.stack import down as run

    run(echo=click.echo)
