"""spend per day of each person, chat and the whole bot, for budgets

A budget summed every usage row of its period on every message: with a global monthly
budget, every request of the month. The totals are kept as usage is recorded; this fills
them from the usage already stored.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The subject of each scope, and which usage rows count for it (as core.budgets reads them).
_SCOPES = (
    ("user", "platform || ':' || user_id", "user_id IS NOT NULL"),
    ("chat", "chat_key", "chat_key IS NOT NULL"),
    ("global", "''", "TRUE"),
)


def upgrade() -> None:
    op.create_table(
        "spend_totals",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "subject", "day", name=op.f("pk_spend_totals")),
    )
    if op.get_bind().dialect.name == "postgresql":
        day = "CAST(created_at AT TIME ZONE 'UTC' AS DATE)"
    else:
        day = "date(created_at)"  # stored as UTC text
    for scope, subject, counted in _SCOPES:
        op.execute(
            "INSERT INTO spend_totals (scope, subject, day, cost_usd) "
            f"SELECT '{scope}', {subject}, {day}, sum(cost_usd) FROM usage "
            f"WHERE cost_usd > 0 AND {counted} GROUP BY 2, 3"
        )


def downgrade() -> None:
    op.drop_table("spend_totals")
