"""chat keys ordered byte by byte on PostgreSQL: the chat-key columns take collation "C"

/forget said at a chat's top level erases its threads too (keys `CHAT_KEY:THREAD`). It found
them with substr(key, 1, n) = 'CHAT_KEY:', which no index serves: it read the whole of
messages, chats, inbound_events and usage (about a second at 1.5 million messages; on SQLite
inside the write transaction, other chats' answers waiting past the busy timeout). It now asks
for the range key >= 'CHAT_KEY:' AND key < 'CHAT_KEY;' of the key's index, exact only under
binary ordering: SQLite's default (BINARY), so nothing changes there. On PostgreSQL the
database's own collation (en_US.UTF-8, ICU) orders punctuation by other rules (ICU puts ';'
before ':': an empty range), so these columns take "C". Equality is the same under both; the
columns' indexes are built again (the rows are not rewritten).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_COLUMNS = (  # (table, column, nullable)
    ("chats", "key", False),
    ("chat_leases", "chat_key", False),
    ("inbound_events", "chat_key", False),
    ("messages", "chat_key", False),
    ("usage", "chat_key", True),
)


def _collate(collation: str | None) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite compares BINARY already
    for table, column, nullable in _COLUMNS:
        op.alter_column(
            table,
            column,
            existing_type=sa.String(length=255),
            type_=sa.String(length=255, collation=collation),
            existing_nullable=nullable,
        )


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate(None)  # the database's own collation again
