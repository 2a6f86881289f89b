"""The ``fissure`` command: a thin layer over the library.

Subcommands live in their own modules and are imported only when used, so ``fissure --help``
stays fast and one broken area cannot break the others.

Exit codes follow click's convention: 2 for a usage error (a bad flag or option value, a bad
``FISSURE_*`` setting: click's UsageError and fissure's :class:`~fissure.errors.UsageError`),
1 for any other failure at run time (every other :class:`~fissure.errors.FissureError`, a missing
optional extra). Both are one line on stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import click

from fissure import __version__
from fissure.errors import FissureError, UsageError

# name -> (module, attribute). Modules own their command's options and help: the summary
# `fissure --help` lists is the first paragraph of the command's own docstring (summary()).
COMMANDS = {
    "data": ("fissure.cli.data", "data"),
    "train": ("fissure.cli.train", "train"),
    "evaluate": ("fissure.cli.evaluate", "evaluate"),
    "model-card": ("fissure.cli.modelcard", "model_card"),
    "package": ("fissure.cli.package", "package"),
    "serve": ("fissure.cli.serve", "serve"),
    "up": ("fissure.cli.stack", "up"),
    "down": ("fissure.cli.stack", "down"),
    "predict": ("fissure.cli.predict", "predict"),
    "api": ("fissure.cli.api", "api"),
    "token": ("fissure.cli.api", "token"),
    "feedback": ("fissure.cli.api", "feedback"),
    "retrain": ("fissure.cli.promote", "retrain"),
    "gate": ("fissure.cli.promote", "gate"),
    "promote": ("fissure.cli.promote", "promote"),
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


def first_paragraph(text: str | None) -> str:
    """The first paragraph of a help text on one line: what `fissure CMD --help` shows first."""
    return " ".join((text or "").split("\f")[0].strip().split("\n\n")[0].split())


def summary(name: str) -> str:
    """The one-line help of a command in `fissure --help`: the first paragraph of its docstring,
    read from its module's source without importing it (`fissure --help` stays fast)."""
    module, attr = COMMANDS[name]
    spec = importlib.util.find_spec(module)
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        doc = next(ast.get_docstring(n) for n in tree.body
                   if isinstance(n, ast.FunctionDef) and n.name == attr and ast.get_docstring(n))
    except (OSError, SyntaxError, TypeError, StopIteration):  # no source, or help= given: ask the command
        try:
            doc = getattr(importlib.import_module(module), attr).help
        except ImportError:
            doc = ""
    return first_paragraph(doc)


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        return importlib.util.find_spec(COMMANDS[name][0]) is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._available(name):
            return None
        module, attr = COMMANDS[name]
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
        rows = [(name, summary(name)) for name in self.list_commands(ctx)]
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
