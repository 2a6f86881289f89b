"""The ``fissure`` command: a thin layer over the library.

Subcommands live in their own modules and are imported only when used, so ``fissure --help``
stays fast and one broken area cannot break the others.

Exit codes follow click's convention: 2 for a usage error (a bad flag or option value, a bad
``FISSURE_*`` setting: click's UsageError and fissure's :class:`~fissure.errors.UsageError`),
1 for any other failure at run time (every other :class:`~fissure.errors.FissureError`, a missing
optional extra). Both are one line on stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from fissure import __version__
from fissure.errors import FissureError, UsageError

# name -> (module, attribute, one-line help). Modules own their command's options.
COMMANDS = {
    "data": ("fissure.cli.data", "data", "Synthesize, ingest and prepare datasets."),
    "train": ("fissure.cli.train", "train", "Train a model, log it to MLflow, optionally register it."),
    "evaluate": ("fissure.cli.evaluate", "evaluate", "Evaluate a model on a dataset; write metrics JSON."),
    "model-card": ("fissure.cli.modelcard", "model_card", "Write the Markdown model card of a model version."),
    "package": ("fissure.cli.package", "package", "Package a registered model for TorchServe/KServe."),
    "serve": ("fissure.cli.serve", "serve", "Run TorchServe and the KServe protocol front (the container entrypoint)."),
    "up": ("fissure.cli.stack", "up", "Start the local stack (serving, MLflow, ...)."),
    "down": ("fissure.cli.stack", "down", "Stop a detached local stack."),
    "predict": ("fissure.cli.predict", "predict", "Send an image to a running server and print the prediction."),
    "api": ("fissure.cli.api", "api", "Serve the feedback API and web UI."),
    "token": ("fissure.cli.api", "token", "Create API tokens."),
    "feedback": ("fissure.cli.api", "feedback", "Export the feedback as training data; clean up its blobs."),
    "retrain": ("fissure.cli.promote", "retrain", "Export feedback, dvc repro, gate the new challengers."),
    "gate": ("fissure.cli.promote", "gate", "Judge a challenger offline against the champion."),
    "promote": ("fissure.cli.promote", "promote", "Canary a challenger; promote or roll back on Prometheus evidence."),
}

# Top-level import name -> the pyproject extra that installs it (keep in step with pyproject.toml).
EXTRAS = dict.fromkeys(
    ("kserve", "ts", "model_archiver", "tritonclient", "grpc", "fastapi", "uvicorn", "honcho", "orjson",
     "aiohttp", "sqlalchemy", "alembic", "psycopg", "fsspec", "prometheus_client", "python_multipart", "kubernetes",
     "fastapi_offline"),
    "serve",
)
# Commands that cannot run at all without an extra: checked before they start anything (TorchServe,
# MLflow). Others import an extra only on some paths (`predict --protocol grpc`) and fail there.
NEEDS = {"serve": "serve", "up": "serve", "package": "serve", "api": "serve", "token": "serve", "feedback": "serve",
         "promote": "serve", "retrain": "serve"}


def _extra_error(command: str, extra: str, detail: str = "") -> FissureError:
    return FissureError(f"fissure {command} needs the {extra} extra: pip install 'fissure[{extra}]'{detail}")


def missing_extra(command: str, exc: ImportError) -> FissureError | None:
    """The one-line error for an optional dependency that is not installed; None for any other."""
    extra = EXTRAS.get((exc.name or "").split(".")[0])
    if extra is None:
        return None
    # an ImportError that is not ModuleNotFoundError: installed, but not a version we support
    detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({str(exc).splitlines()[0]})"
    return _extra_error(command, extra, detail)


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
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise missing_extra(name, exc) or exc

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        # Before a command (not its --help) does any work: the FISSURE_* settings (a bad value is a
        # usage error up front, not a failure halfway through a run) and the extra it needs.
        if cmd is not None and not ctx.resilient_parsing and not set(ctx.help_option_names) & set(rest):
            from fissure.settings import reload_settings  # pydantic: kept off the --help path

            reload_settings()
            extra = NEEDS.get(name)
            if extra and any(importlib.util.find_spec(m) is None for m, e in EXTRAS.items() if e == extra):
                raise _extra_error(name, extra)
        return name, cmd, rest

    def invoke(self, ctx):
        # Commands import their heavy dependencies when they run: an absent extra surfaces here.
        try:
            return super().invoke(ctx)
        except ImportError as exc:
            raise missing_extra(ctx.invoked_subcommand or "", exc) or exc

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
        return 2 if isinstance(exc, UsageError) else 1
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
