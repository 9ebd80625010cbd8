"""Fingerprint postings packed into one row per hash bucket

One database row per posting cost about 76 bytes on PostgreSQL for 12 bytes of
data (row header, line pointer, b-tree entry); packed by bucket, a posting costs
its 12 bytes plus a share of one row's overhead. Existing rows are carried over.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 20:00:00
"""
from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import op

from soundkit import postings

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        'fingerprint_blocks',
        sa.Column('key', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  autoincrement=False, nullable=False),
        sa.Column('postings', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_fingerprint_blocks')),
    )
    op.create_table(
        'fingerprint_layout',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('shift', sa.Integer(), nullable=False),
        sa.Column('previous_shift', sa.Integer(), nullable=True),
        sa.Column('postings', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_fingerprint_layout')),
    )
    if bind.dialect.name == 'postgresql':
        # Random postings do not compress: spare pglz the attempt on large buckets.
        op.execute('ALTER TABLE fingerprint_blocks ALTER COLUMN postings SET STORAGE EXTERNAL')
    count = int(bind.exec_driver_sql('SELECT count(*) FROM fingerprint_hashes').scalar() or 0)
    shift = postings.shift_for(count)
    if count and bind.dialect.name == 'postgresql':
        bind.exec_driver_sql(
            "INSERT INTO fingerprint_blocks (key, postings) "
            "SELECT (%(shift)s::bigint << 32) | ((hash::bigint & 4294967295) >> %(shift)s), "
            "string_agg(int4send(hash) || int4send(track_id) || int4send(t), ''::bytea) "
            "FROM fingerprint_hashes GROUP BY 1", {"shift": shift})
    elif count:
        rows = np.asarray(bind.exec_driver_sql(
            'SELECT hash, track_id, t FROM fingerprint_hashes').all(), dtype=np.int64)
        recs = postings.records(rows[:, 0].astype(np.int32).view(np.uint32), rows[:, 1],
                                rows[:, 2])
        bind.exec_driver_sql('INSERT INTO fingerprint_blocks (key, postings) VALUES (?, ?)',
                             postings.group(recs, shift))
    bind.execute(sa.text('INSERT INTO fingerprint_layout (id, shift, postings) '
                         'VALUES (1, :shift, :count)'), {"shift": shift, "count": count})
    op.drop_index('ix_fingerprint_hashes_hash', table_name='fingerprint_hashes')
    op.drop_table('fingerprint_hashes')


def downgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        'fingerprint_hashes',
        sa.Column('hash', sa.Integer(), nullable=False),
        sa.Column('track_id', sa.Integer(), nullable=False),
        sa.Column('t', sa.Integer(), nullable=False),
    )
    blobs = [row[0] for row in bind.exec_driver_sql('SELECT postings FROM fingerprint_blocks')]
    if blobs:
        recs = postings.decode(b''.join(blobs))
        rows = list(zip(recs['hash'].astype(np.uint32).view(np.int32).tolist(),
                        recs['track'].tolist(), recs['t'].tolist(), strict=True))
        table = sa.table('fingerprint_hashes', sa.column('hash'), sa.column('track_id'),
                         sa.column('t'))
        op.bulk_insert(table, [{'hash': h, 'track_id': i, 't': t} for h, i, t in rows])
    if bind.dialect.name == 'postgresql':
        op.create_index('ix_fingerprint_hashes_hash', 'fingerprint_hashes', ['hash'],
                        postgresql_include=['track_id', 't'])
    else:
        op.create_index('ix_fingerprint_hashes_hash', 'fingerprint_hashes', ['hash'])
    op.drop_table('fingerprint_layout')
    op.drop_table('fingerprint_blocks')
