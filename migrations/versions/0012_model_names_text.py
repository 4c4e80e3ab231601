"""model names of any length: chats.model and usage.model become unbounded text

vLLM serves a model under the path it was started with (a Hugging Face snapshot's path runs
past 128 characters): on PostgreSQL recording its usage failed, and with it every answer.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_COLUMNS = (("chats", True), ("usage", False))  # (table, nullable)


def upgrade() -> None:
    for table, nullable in _COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                "model", existing_type=sa.String(length=128), type_=sa.Text(), nullable=nullable
            )


def downgrade() -> None:
    # Longer names keep their first 128 characters (what the old schema could hold).
    for table, nullable in _COLUMNS:
        op.execute(
            sa.text(f"UPDATE {table} SET model = substr(model, 1, 128) WHERE length(model) > 128")
        )
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                "model", existing_type=sa.Text(), type_=sa.String(length=128), nullable=nullable
            )
