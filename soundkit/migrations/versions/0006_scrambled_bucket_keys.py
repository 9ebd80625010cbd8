"""Fingerprint blocks keyed by scrambled hash

Buckets of consecutive hash values were crowded where music's hashes are
(queries read several times the average bucket to use a few of its postings);
buckets are now cut from the hash scrambled by an odd multiplier, which spreads
them evenly. Every block's records are regrouped under the new keys, in pages,
into a fresh table; the downgrade regroups them under the plain keys.

The key functions are written out here, not imported, so that this revision
keeps meaning what it meant when the application's layout moves on.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:00:00
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

RECORD = np.dtype([('hash', '>u4'), ('track', '>i4'), ('t', '>i4')])
KEY_BITS = 28
MIX = 0x9E3779B
PAGE = 20_000

KeyOf = Callable[[npt.NDArray[np.int64], int], npt.NDArray[np.int64]]


def _scrambled(hashes: npt.NDArray[np.int64], shift: int) -> npt.NDArray[np.int64]:
    out: npt.NDArray[np.int64] = ((hashes * MIX) & ((1 << KEY_BITS) - 1)) >> shift
    return out


def _plain(hashes: npt.NDArray[np.int64], shift: int) -> npt.NDArray[np.int64]:
    out: npt.NDArray[np.int64] = hashes >> shift
    return out


def upgrade() -> None:
    _rekey(_scrambled)


def downgrade() -> None:
    _rekey(_plain)


def _rekey(bucket_of: KeyOf) -> None:
    """Move every posting into a new ``fingerprint_blocks`` keyed by ``bucket_of``.

    Postings of a layout being left by an unfinished rebuild join the current one.
    """
    bind = op.get_bind()
    postgres = bind.dialect.name == 'postgresql'
    op.rename_table('fingerprint_blocks', 'fingerprint_blocks_old')
    if postgres:
        op.execute('ALTER INDEX pk_fingerprint_blocks RENAME TO pk_fingerprint_blocks_old')
    op.create_table(
        'fingerprint_blocks',
        sa.Column('key', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  autoincrement=False, nullable=False),
        sa.Column('postings', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_fingerprint_blocks')),
    )
    if postgres:
        op.execute('ALTER TABLE fingerprint_blocks ALTER COLUMN postings SET STORAGE EXTERNAL')
    shift = bind.exec_driver_sql('SELECT shift FROM fingerprint_layout WHERE id = 1').scalar()
    if shift is not None:
        _copy(bind, int(shift), bucket_of)
        bind.exec_driver_sql('UPDATE fingerprint_layout SET previous_shift = NULL WHERE id = 1')
    op.drop_table('fingerprint_blocks_old')


def _copy(bind: sa.Connection, shift: int, bucket_of: KeyOf) -> None:
    """Old blocks a page at a time, regrouped and appended to the new table."""
    joined = ('fingerprint_blocks.postings || excluded.postings'
              if bind.dialect.name == 'postgresql'
              else 'CAST(fingerprint_blocks.postings || excluded.postings AS BLOB)')
    append = sa.text('INSERT INTO fingerprint_blocks (key, postings) VALUES (:k, :p) '  # noqa: S608
                     f'ON CONFLICT (key) DO UPDATE SET postings = {joined}')
    after = -1
    while True:
        rows = bind.execute(sa.text(
            'SELECT key, postings FROM fingerprint_blocks_old WHERE key > :after '
            'ORDER BY key LIMIT :page'), {'after': after, 'page': PAGE}).all()
        if not rows:
            return
        after = int(rows[-1][0])
        recs = np.frombuffer(b''.join(bytes(r[1]) for r in rows), dtype=RECORD)
        keys = (np.int64(shift) << np.int64(32)) | bucket_of(recs['hash'].astype(np.int64),
                                                             shift)
        order = np.argsort(keys, kind='stable')
        keys, blob = keys[order], recs[order].tobytes()
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], keys.size]
        size = RECORD.itemsize
        bind.execute(append, [{'k': int(keys[s]), 'p': blob[s * size:e * size]}
                              for s, e in zip(starts.tolist(), ends.tolist(), strict=True)])
