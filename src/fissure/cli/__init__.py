"""The ``fissure`` command: a thin layer over the library.

Subcommands live in their own modules and are imported only when used, so ``fissure --help``
stays fast and one broken area cannot break the others. A FissureError (or a click usage
error) is one line on stderr and a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from fissure import __version__
from fissure.errors import FissureError

# name -> (module, attribute, one-line help). Modules own their command's options.
COMMANDS = {
    "data": ("fissure.cli.data", "data", "Synthesize, ingest and prepare datasets."),
    "train": ("fissure.cli.train", "train", "Train a model, log it to MLflow, optionally register it."),
    "evaluate": ("fissure.cli.evaluate", "evaluate", "Evaluate a model on a dataset; write metrics JSON."),
    "package": ("fissure.cli.package", "package", "Package a registered model for TorchServe/KServe."),
    "serve": ("fissure.cli.serve", "serve", "Run TorchServe and the KServe protocol front (the container entrypoint)."),
    "up": ("fissure.cli.stack", "up", "Start the local stack (serving, MLflow, ...)."),
    "down": ("fissure.cli.stack", "down", "Stop a detached local stack."),
    "predict": ("fissure.cli.predict", "predict", "Send an image to a running server and print the prediction."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        return importlib.util.find_spec(COMMANDS[name][0]) is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._available(name):
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fissure")
def cli():
    """fissure: train, serve, watch and improve crack-detection models."""


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="fissure", standalone_mode=False)
    except FissureError as exc:
        click.echo(f"fissure: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("fissure: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
