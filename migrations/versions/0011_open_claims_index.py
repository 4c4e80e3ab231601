"""the open events by the process working on them (a partial index), for its heartbeat

Each process renews the leases of the events it works on every few seconds. PostgreSQL
planned that update while the table was small and kept the plan: a sequential scan of every
event ever received (until retention deletes them), on every beat.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_OPEN = sa.text("status IN ('received', 'answered')")


def upgrade() -> None:
    op.create_index(
        "ix_inbound_events_open_claims",
        "inbound_events",
        ["claimed_by"],
        postgresql_where=_OPEN,
        sqlite_where=_OPEN,
    )


def downgrade() -> None:
    op.drop_index("ix_inbound_events_open_claims", table_name="inbound_events")
