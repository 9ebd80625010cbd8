"""Fingerprint hash index carries track_id and t on PostgreSQL (index-only lookups)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 09:00:00
"""
from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no INCLUDE; its index stays as it is
    op.drop_index('ix_fingerprint_hashes_hash', table_name='fingerprint_hashes')
    op.create_index('ix_fingerprint_hashes_hash', 'fingerprint_hashes', ['hash'],
                    postgresql_include=['track_id', 't'])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index('ix_fingerprint_hashes_hash', table_name='fingerprint_hashes')
    op.create_index('ix_fingerprint_hashes_hash', 'fingerprint_hashes', ['hash'])
