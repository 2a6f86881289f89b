"""``fissure package``: an MLflow model -> TorchServe MAR + config.properties (KServe layout)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("package")
@click.option("--model", "model_uri", required=True,
              help="Any URI MLflow accepts: models:/crack-classifier@champion, models:/name/3, runs:/<id>/model, a folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output folder: OUT/model-store/<name>.mar and OUT/config/config.properties.")
@click.option("--name", default=None, help="Served model name (default: the registered model's name).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="TorchServe dynamic batch size.")
@click.option("--max-batch-delay", type=int, default=10, show_default=True,
              help="Milliseconds TorchServe waits to fill a batch.")
@click.option("--workers", type=int, default=1, show_default=True, help="TorchServe workers for this model.")
@click.option("--response-timeout", type=int, default=120, show_default=True, help="Seconds per batch.")
def package(model_uri, out, name, batch_size, max_batch_delay, workers, response_timeout):
    """Package a registered model for TorchServe/KServe (merges into an existing OUT)."""
    import logging

    import mlflow  # noqa: F401 - configure its loggers first, then keep them quiet

    from fissure.serving.package import package as run

    for logger_name in ("mlflow", "alembic"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)

    rec = run(model_uri, out, name=name, batch_size=batch_size, max_batch_delay=max_batch_delay,
              workers=workers, response_timeout=response_timeout)
    click.echo(f"packaged {rec['name']} v{rec['version']} (run {rec['run_id']}) as {rec['served_name']}")
    click.echo(f"  {rec['mar']}")
    click.echo(f"  {rec['config']}")
