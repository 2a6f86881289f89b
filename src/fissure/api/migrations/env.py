"""Alembic environment: run by :meth:`fissure.api.store.Store.migrate` on its own connection.

A new revision is a file in versions/ (``down_revision`` = the previous one); write it by hand,
or with ``alembic revision --autogenerate`` against a scratch database.
"""

from alembic import context

from fissure.api.store import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
