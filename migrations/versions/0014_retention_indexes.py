"""retention finds old rows by their time: indexes on messages.created_at and
inbound_events.received_at

The hourly retention pass deletes history and finished events older than
RELAYBOT_RETENTION_DAYS. Without these indexes every pass read the whole of both tables (on
SQLite holding the write lock meanwhile, seconds on a big history, even with nothing to
delete).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_created_at", "messages", ["created_at"])
    op.create_index("ix_inbound_events_received_at", "inbound_events", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_inbound_events_received_at", table_name="inbound_events")
    op.drop_index("ix_messages_created_at", table_name="messages")
