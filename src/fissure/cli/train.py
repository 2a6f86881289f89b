"""``fissure train``: train a model, log it to MLflow, optionally register it."""

from __future__ import annotations

import click

from fissure import MODEL_NAMES


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--task", type=click.Choice(sorted(MODEL_NAMES)), required=True,
              help="classify: one folder per class (crack/ no_crack/, or any defect classes: the folder names become the model's classes); segment: images/ + masks/.")
@click.option("--data", "data", type=click.Path(file_okay=False), required=True,
              help="Split root with train/ val/ (test/) subfolders, or one folder split deterministically.")
@click.option("--epochs", type=int, default=None, help="Maximum epochs (early stopping may end sooner).")
@click.option("--register", is_flag=True, help="Register the model (alias challenger; champion if none yet).")
@click.option("--params", "params", type=click.Path(dir_okay=False), default=None,
              help="YAML file; its train_classifier: / train_segmenter: section overrides the defaults.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Also write OUT/model (MLflow model dir), OUT/metrics.json, OUT/history.csv, OUT/plots/.")
@click.option("--seed", type=int, default=None, help="Override the seed.")
@click.option("--batch-size", type=int, default=None, help="Override the batch size.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda when available, else cpu]")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="The epoch, its metrics and an ETA on stderr: a live bar on a terminal, a line per epoch otherwise.")
def train(task, data, epochs, register, params, out, seed, batch_size, device, progress):
    """Train the crack classifier or segmenter and log the run to MLflow.

    Every run logs params, per-epoch metrics, plots, the model and lineage tags (git.commit,
    dvc.data_hash, params.hash) to the tracking store (MLFLOW_TRACKING_URI, default
    .fissure/mlflow.db).

    \b
    Examples:
      fissure train --task segment --data data/prepared/segment --register
      fissure train --task classify --data data/prepared/classify --epochs 5 --out models/crack-classifier
    """
    from fissure.training.config import load_config
    from fissure.training.loop import quiet_determinism_warnings
    from fissure.training.run import train as run_train

    quiet_determinism_warnings()
    cfg = load_config(task, params, epochs=epochs, seed=seed, batch_size=batch_size)
    run_train(task, data, cfg, out=out, register=register, device=device, progress=progress,
              echo=lambda msg: click.echo(msg, err=True))
