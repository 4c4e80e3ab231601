"""events kept for a later attempt ("deferred") are open: the heartbeat's index names them

A voice note nobody addressed whose transcription failed for now goes back to the inbox for
the next sweep. As a "received" event it was the chat's oldest open event, and on PostgreSQL
the chat's later messages waited for it (until that sweep). It is now "deferred": open (the
sweep takes it, retention keeps it) but not waiting, so the chat goes on without it. The
partial index of open events by their process names the open statuses literally, so it is
made again with the new one.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_INDEX = "ix_inbound_events_open_claims"
_BEFORE = sa.text("status IN ('received', 'answered')")
_AFTER = sa.text("status IN ('received', 'answered', 'deferred')")


def _make(where: sa.TextClause) -> None:
    op.drop_index(_INDEX, table_name="inbound_events")
    op.create_index(
        _INDEX, "inbound_events", ["claimed_by"], postgresql_where=where, sqlite_where=where
    )


def upgrade() -> None:
    _make(_AFTER)


def downgrade() -> None:
    # The code before this revision knows no "deferred" event: each waits as "received".
    op.execute("UPDATE inbound_events SET status = 'received' WHERE status = 'deferred'")
    _make(_BEFORE)
