"""the events waiting for their chat's turn, indexed by chat (a partial index)

The check made for every message ("does an older event of this chat wait?") used the
status index on PostgreSQL and read every waiting event of every chat.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_WAITING = sa.text("status = 'received'")


def upgrade() -> None:
    op.create_index(
        "ix_inbound_events_waiting",
        "inbound_events",
        ["chat_key", "id"],
        postgresql_where=_WAITING,
        sqlite_where=_WAITING,
    )


def downgrade() -> None:
    op.drop_index("ix_inbound_events_waiting", table_name="inbound_events")
