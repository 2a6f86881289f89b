"""Alembic migrations of the feedback store; :meth:`fissure.api.store.Store.migrate` runs them."""
