"""usage rows carry the id of the event that reported them

A usage event replayed from the outbox (after an outage or a crash) must not be counted twice:
`usage_records.event_id` is unique, and the writer skips an event id it already stored.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('usage_records') as batch:
        batch.add_column(sa.Column('event_id', sa.String(length=64), nullable=True))
        batch.create_unique_constraint(batch.f('uq_usage_records_event_id'), ['event_id'])


def downgrade() -> None:
    with op.batch_alter_table('usage_records') as batch:
        batch.drop_constraint(batch.f('uq_usage_records_event_id'), type_='unique')
        batch.drop_column('event_id')
