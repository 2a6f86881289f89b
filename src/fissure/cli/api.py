"""``fissure api`` (the feedback API and web UI), ``fissure token create|list|revoke``, ``fissure feedback``."""

from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path

import click

from fissure.api.auth import ALL_ROLES  # light: the choice list stays the API's


def _open_store():
    from fissure.api.store import Store

    store = Store()
    store.migrate()
    return store


def _bootstrap_admin(store) -> None:
    """The first start of a store without tokens: register FISSURE_API_ADMIN_TOKEN, or make one."""
    from fissure.api.auth import create_token, hash_token
    from fissure.settings import settings

    given = settings().api_admin_token
    if given is not None and given.get_secret_value().strip():
        if store.add_first_token(hash_token(given.get_secret_value().strip()), "admin", "admin"):
            click.echo("fissure api: registered the admin token from FISSURE_API_ADMIN_TOKEN", err=True)
        return
    made = create_token(store, "admin", "admin", only_if_none=True)
    if made:
        click.echo(f"admin token (shown once; `fissure token create` makes more): {made[0]}")


NO_ADMIN_HINT = "`fissure token create --role admin --name NAME` makes one"


def _warn_without_admin(store) -> None:
    """One line on stderr when the store has tokens but none of them an unrevoked admin's."""
    from fissure.settings import settings

    if store.has_admin_token():
        return
    given = " (FISSURE_API_ADMIN_TOKEN is registered only in a store without tokens)" \
        if settings().api_admin_token is not None else ""
    click.echo(f"fissure api: warning: the store has tokens but no admin token{given}: {NO_ADMIN_HINT}", err=True)


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            from fissure.errors import FissureError

            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise FissureError(f"port {port} on {host} {why}") from None


@click.command("api")
@click.option("--host", default=None, help="Address to bind [env FISSURE_API_HOST; default 127.0.0.1].")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port [env FISSURE_API_PORT; default 8000].")
def api(host, port):
    """Serve the feedback API and web UI (OpenAPI at /docs).

    Migrates the store (FISSURE_DATABASE_URL, default SQLite under .fissure/) and, when it holds
    no token yet, creates an admin token and prints it once (or registers FISSURE_API_ADMIN_TOKEN).
    Warns when the store has tokens but no admin token.

    \b
    Environment:
      FISSURE_INFERENCE_URL    the serving front it predicts with
                               [default: http://127.0.0.1:8080]
      FISSURE_HOME             local state: SQLite store, blobs, retrain logs
                               [default: .fissure]
      FISSURE_DATABASE_URL     the store [default: sqlite:///<home>/api.db]
      FISSURE_BLOB_URL         images and masks [default: <home>/blobs]
      FISSURE_API_ADMIN_TOKEN  the admin token to register in a store without tokens
      FISSURE_RETRAIN_COMMAND  what POST /retrain runs [default: fissure retrain]
    More in docs/feedback.md.
    """
    import uvicorn

    from fissure.api.app import create_app
    from fissure.settings import LOOPBACK, settings

    cfg = settings()
    host = host or cfg.api_host
    port = port or cfg.api_port
    _check_port(host, port)
    store = _open_store()
    _bootstrap_admin(store)
    _warn_without_admin(store)
    if host not in (LOOPBACK, "localhost", "::1"):
        click.echo(f"fissure api: listening on {host}: reachable beyond this machine (tokens still required)",
                   err=True)
    click.echo(f"fissure api: http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ "
               f"(API docs at /docs)", err=True)
    sys.stdout.flush()
    uvicorn.run(create_app(cfg, store), host=host, port=port, log_level="warning",
                access_log=cfg.access_log, timeout_graceful_shutdown=int(cfg.drain_seconds) or None)


@click.group("token")
def token():
    """Manage API tokens: create, list, revoke.

    Revoking takes effect at the API's next request, no restart needed.
    """


@token.command("create")
@click.option("--role", required=True, type=click.Choice(ALL_ROLES),
              help="viewer: predict and history; annotator: + feedback, export; admin: + retrain, tokens, "
                   "pipeline events; pipeline: pipeline events only (for the retraining pipeline).")
@click.option("--name", default=None,
              help="Who uses it: feedback is recorded under this name [default: <role>-<random>].")
def token_create(role, name):
    """Create a token and print it (once: the store keeps only its hash)."""
    from fissure.api.auth import create_token
    from fissure.errors import InputError, UsageError

    store = _open_store()
    try:
        value, row = create_token(store, role, name)
    except InputError as exc:  # a bad option value (--name too long): a usage error
        raise UsageError(f"--name: {exc}") from None
    click.echo(value)
    click.echo(f"role {row.role}, name {row.name!r}, id {row.id}", err=True)


@token.command("list")
def token_list():
    """List the tokens (never a token's secret or hash).

    One line each: id, name, role, created (UTC), revoked.
    """
    rows = _open_store().list_tokens()
    if not rows:
        click.echo("no tokens (`fissure token create` makes one)", err=True)
        return
    table = [("ID", "NAME", "ROLE", "CREATED", "REVOKED")] + [
        (t.id, t.name, t.role, t.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "yes" if t.revoked else "no")
        for t in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])


@token.command("revoke")
@click.argument("token_ref", metavar="ID|NAME")
def token_revoke(token_ref):
    """Revoke a token: the API refuses it from its next request.

    ID|NAME: the token's id (`fissure token list`), or its name when one unrevoked token has
    that name. Names are not unique (a person's tokens share one): revoke by id then. Revoking a
    revoked token changes nothing and says so.
    """
    store = _open_store()
    row, already = store.revoke_token(token_ref)
    what = f"token {row.id} (name {row.name!r}, role {row.role})"
    click.echo(f"{what} was already revoked" if already else f"revoked {what}")
    if not store.has_admin_token():
        click.echo(f"fissure token: no unrevoked admin token is left: {NO_ADMIN_HINT}", err=True)


@click.group("feedback")
def feedback():
    """Export the feedback people gave through the API as training data; clean up its blobs."""


@feedback.command("export")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write (e.g. data/feedback, which `fissure data prepare` reads).")
def feedback_export(out):
    """Write the judged items in the dataset layouts `fissure data prepare` reads, with manifest.json.

    Replaces a previous export's images/, masks/ and manifest.json in OUT; leaves anything else.
    """
    from fissure.api import export

    manifest = export.write_folder(_open_store(), out)
    counts = manifest["counts"]
    classes = ", ".join(f"{k} {v}" for k, v in counts["classify"].items()) or "none"
    click.echo(f"wrote {out}: {len(manifest['items'])} items (classify: {classes}; segment: {counts['segment']}), "
               f"{counts['skipped']} skipped")


@feedback.command("gc")
@click.option("--older-than", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds a blob must have been stored for: a request in flight writes its blobs first.")
def feedback_gc(older_than):
    """Delete stored blobs (images, masks, ...) that no prediction or feedback references."""
    removed = _open_store().gc_blobs(older_than=older_than)
    click.echo(f"removed {len(removed)} unreferenced blob{'s' if len(removed) != 1 else ''}")
