"""an answer's platform messages, all of them: reply_ref becomes unbounded text

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.alter_column(
            "reply_ref", existing_type=sa.String(length=255), type_=sa.Text(), nullable=True
        )


def downgrade() -> None:
    # Longer lists keep their first ids (a resumed answer then continues in those).
    op.execute(
        sa.text("UPDATE inbound_events SET reply_ref = substr(reply_ref, 1, 255)")
        if op.get_bind().dialect.name == "sqlite"
        else sa.text("UPDATE inbound_events SET reply_ref = left(reply_ref, 255)")
    )
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.alter_column(
            "reply_ref", existing_type=sa.Text(), type_=sa.String(length=255), nullable=True
        )
