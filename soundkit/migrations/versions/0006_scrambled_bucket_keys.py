"""Fingerprint blocks keyed by scrambled hash

Buckets of consecutive hash values were crowded where music's hashes are
(queries read several times the average bucket to use a few of its postings);
buckets are now cut from the hash scrambled by an odd multiplier, which spreads
them evenly. Every block's records are regrouped under the new keys into a fresh
table (one set-based statement on PostgreSQL, passes of bounded memory on SQLite);
the downgrade regroups them under the plain keys.

The key functions are written out here, not imported, so that this revision
keeps meaning what it meant when the application's layout moves on.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:00:00
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

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
#: Old blocks read per query on SQLite.
PAGE = 20_000
#: Record bytes regrouped in memory at once on SQLite (more make several passes).
PASS_BYTES = 256 * 1024 * 1024

KeyOf = Callable[[npt.NDArray[np.int64], int], npt.NDArray[np.int64]]

#: One record per row: the postings of every old block cut into 12-byte records.
_RECORDS = ('SELECT substring(o.postings FROM i * 12 + 1 FOR 12) AS r '
            'FROM fingerprint_blocks_old o, generate_series(0, length(o.postings) / 12 - 1) AS i')
#: A record's hash (its first four bytes, big-endian) as a bigint.
_HASH = ('((get_byte(r, 0)::bigint << 24) | (get_byte(r, 1) << 16) '
         '| (get_byte(r, 2) << 8) | get_byte(r, 3))')
_SQL_BUCKET = {
    'scrambled': f'(({_HASH} * {MIX}) & {(1 << KEY_BITS) - 1}) >> %(shift)s',
    'plain': f'{_HASH} >> %(shift)s',
}


def _scrambled(hashes: npt.NDArray[np.int64], shift: int) -> npt.NDArray[np.int64]:
    out: npt.NDArray[np.int64] = ((hashes * MIX) & ((1 << KEY_BITS) - 1)) >> shift
    return out


def _plain(hashes: npt.NDArray[np.int64], shift: int) -> npt.NDArray[np.int64]:
    out: npt.NDArray[np.int64] = hashes >> shift
    return out


_BUCKET = {'scrambled': _scrambled, 'plain': _plain}


def upgrade() -> None:
    _rekey('scrambled')


def downgrade() -> None:
    _rekey('plain')


def _rekey(scheme: str) -> None:
    """Move every posting into a new ``fingerprint_blocks`` keyed by ``scheme``.

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
        if postgres:
            _regroup_in_sql(bind, int(shift), scheme)
        else:
            _regroup_in_passes(bind, int(shift), _BUCKET[scheme])
        bind.exec_driver_sql('UPDATE fingerprint_layout SET previous_shift = NULL WHERE id = 1')
    op.drop_table('fingerprint_blocks_old')


def _regroup_in_sql(bind: sa.Connection, shift: int, scheme: str) -> None:
    """PostgreSQL: one set-based pass over the records (``INSERT … SELECT … GROUP BY``)."""
    bind.exec_driver_sql(
        'INSERT INTO fingerprint_blocks (key, postings) '  # noqa: S608 - fixed expressions
        f'SELECT (%(shift)s::bigint << 32) | ({_SQL_BUCKET[scheme]}), string_agg(r, \'\'::bytea) '
        f'FROM ({_RECORDS}) AS records GROUP BY 1', {'shift': shift})


def _regroup_in_passes(bind: sa.Connection, shift: int, bucket_of: KeyOf) -> None:
    """SQLite: each pass reads every old block and writes one share of the new ones.

    A new block is written once, whole: pass ``p`` keeps the records whose new bucket
    is ``p`` modulo the number of passes, so no pass holds more than ``PASS_BYTES``.
    """
    total = int(bind.exec_driver_sql(
        'SELECT coalesce(sum(length(postings)), 0) FROM fingerprint_blocks_old').scalar() or 0)
    passes = max(1, -(-total // PASS_BYTES))
    for share in range(passes):
        kept: list[np.ndarray] = []
        keys: list[npt.NDArray[np.int64]] = []
        for recs in _old_records(bind):
            buckets = bucket_of(recs['hash'].astype(np.int64), shift)
            mine = buckets % passes == share
            kept.append(recs[mine])
            keys.append((np.int64(shift) << np.int64(32)) | buckets[mine])
        if kept:  # concatenate would give native byte order: keep the on-disk one
            _insert_grouped(bind, np.concatenate(kept).astype(RECORD, copy=False),
                            np.concatenate(keys))


def _old_records(bind: sa.Connection) -> Iterator[np.ndarray]:
    after = -1
    while True:
        rows = bind.execute(sa.text(
            'SELECT key, postings FROM fingerprint_blocks_old WHERE key > :after '
            'ORDER BY key LIMIT :page'), {'after': after, 'page': PAGE}).all()
        if not rows:
            return
        after = int(rows[-1][0])
        yield np.frombuffer(b''.join(bytes(r[1]) for r in rows), dtype=RECORD)


def _insert_grouped(bind: sa.Connection, recs: np.ndarray, keys: npt.NDArray[np.int64]) -> None:
    order = np.argsort(keys, kind='stable')
    keys, blob = keys[order], recs[order].tobytes()
    if keys.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], keys.size]
    size = RECORD.itemsize
    bind.execute(sa.text('INSERT INTO fingerprint_blocks (key, postings) VALUES (:k, :p)'),
                 [{'k': int(keys[s]), 'p': blob[s * size:e * size]}
                  for s, e in zip(starts.tolist(), ends.tolist(), strict=True)])
