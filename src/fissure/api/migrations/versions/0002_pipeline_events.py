"""pipeline_events: retraining ends, gate decisions, canary steps, promotions and rollbacks.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

from fissure.api.store import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipeline_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("result", sa.String(16), nullable=True),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.Column("from_version", sa.String(64), nullable=True),
        sa.Column("to_version", sa.String(64), nullable=True),
        sa.Column("who", sa.String(128), nullable=True),
        sa.Column("why", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("recorded_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_pipeline_events_kind_model", "pipeline_events", ["kind", "model"])


def downgrade() -> None:
    op.drop_table("pipeline_events")
