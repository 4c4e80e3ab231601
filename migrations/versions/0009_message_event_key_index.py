"""a stored user turn found by its event's key (a partial index)

A resumed event asks whether its user turn already reached the history; without an index
that read the whole `messages` table, once per resumed event.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_KEYED = sa.text("event_key IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_messages_event_key",
        "messages",
        ["event_key"],
        postgresql_where=_KEYED,
        sqlite_where=_KEYED,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_event_key", table_name="messages")
