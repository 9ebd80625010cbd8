"""How the fingerprint index packs its rows into database blocks.

A row of the index is a *posting* ``(hash, track_id, t)``. Stored one per database
row, each posting costs far more in row headers and index entries than its twelve
bytes of data (about 76 bytes on PostgreSQL). So postings are packed: all the
postings whose hash falls in one *bucket* share a row, ``(key, postings)``, where
``postings`` is the bucket's records end to end (12 bytes each, big-endian, in no
particular order) and ``key`` says which bucket of which layout it is
(:func:`block_key`).

A bucket is not a run of consecutive hashes. Hashes are fields (pitches,
intervals) packed side by side, and music crowds some regions of that space: a
query's hashes lie mostly in those regions, so runs of consecutive hashes around
them hold several times the average, all of it read and thrown away. The hash is
first scrambled by an odd multiplier modulo ``2**KEY_BITS`` (:func:`buckets_for`, a
bijection), then cut into ``2**shift`` wide buckets, which spreads the crowded
regions evenly; a bucket then holds its own hash's postings and about the
average of others'.

The shift adapts to the index's size: :func:`shift_for` picks the one that puts
between ``TARGET_PER_BUCKET / 2`` and ``TARGET_PER_BUCKET`` postings in an average
bucket. Few enough that a lookup reads little besides the postings it asked for;
enough that the row overhead is shared. As the index grows the layout is rebuilt
with a smaller shift (each bucket splits), which costs one rewrite per doubling.
While a rebuild runs, two layouts coexist, told apart by the shift in the key.

Everything here is numpy on bytes; the database side is in
:mod:`soundkit.fingerprints`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from pipelines.fingerprint.landmarks import HASH_LIMIT

U32 = npt.NDArray[np.uint32]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]

#: One posting on disk; big-endian so that PostgreSQL's ``int4send`` can write it too.
RECORD = np.dtype([("hash", ">u4"), ("track", ">i4"), ("t", ">i4")])
#: Postings an average bucket holds at most before the layout is split.
TARGET_PER_BUCKET = 16
#: Widest bucket (an empty or tiny index): 2**20 hash values share a row.
MAX_SHIFT = 20
#: Bits of the scrambled hash that buckets are cut from: every hash is below 2**KEY_BITS.
KEY_BITS = 28
#: Odd, so that multiplying by it modulo 2**KEY_BITS is a bijection (Knuth's
#: multiplicative hashing: the high bits of the product depend on every bit of the hash).
MIX = 0x9E3779B
_KEY_MASK = (1 << KEY_BITS) - 1
assert HASH_LIMIT <= 1 << KEY_BITS


def shift_for(postings: int) -> int:
    """The bucket width (as a shift) for an index of ``postings`` rows.

    The largest shift at which an average bucket holds at most
    ``TARGET_PER_BUCKET`` postings, so a split halves the load to at least half of it.
    """
    if postings <= 0:
        return MAX_SHIFT
    width = TARGET_PER_BUCKET * (1 << KEY_BITS) / postings
    return max(0, min(MAX_SHIFT, math.floor(math.log2(width)) if width >= 1 else 0))


def refit(shift: int, postings: int) -> int | None:
    """The shift to rebuild a layout of ``shift`` to at ``postings``, or None if it fits.

    Buckets split as soon as they average more than ``TARGET_PER_BUCKET`` postings,
    but merge only below a quarter of it, so that an index hovering around a
    boundary is not rebuilt back and forth.
    """
    ideal = shift_for(postings)
    if shift > ideal or shift < ideal - 1:
        return ideal
    return None


def block_key(shift: int, bucket: npt.ArrayLike) -> I64:
    """The row key of ``bucket`` in the layout of ``shift``: ``shift << 32 | bucket``."""
    out: I64 = (np.int64(shift) << np.int64(32)) | np.asarray(bucket, dtype=np.int64)
    return out


def buckets_for(hashes: npt.ArrayLike, shift: int) -> I64:
    """The bucket of each hash in the layout of ``shift``: its scrambled value's top bits."""
    h = np.asarray(hashes, dtype=np.uint32).astype(np.int64)
    out: I64 = ((h * np.int64(MIX)) & np.int64(_KEY_MASK)) >> np.int64(shift)
    return out


def keys_for(hashes: npt.ArrayLike, shift: int) -> I64:
    """The row key holding each hash in the layout of ``shift``."""
    return block_key(shift, buckets_for(hashes, shift))


def key_shift(key: int) -> int:
    return int(key) >> 32


def records(hashes: npt.ArrayLike, tracks: npt.ArrayLike, times: npt.ArrayLike) -> np.ndarray:
    """Postings as on-disk records (parallel arrays of one length)."""
    h = np.asarray(hashes, dtype=np.uint32)
    out = np.empty(h.shape[0], dtype=RECORD)
    out["hash"] = h
    out["track"] = np.asarray(tracks, dtype=np.int32)
    out["t"] = np.asarray(times, dtype=np.int32)
    return out


def decode(blob: bytes | bytearray | memoryview) -> np.ndarray:
    """The records of one or more blocks' ``postings`` joined together."""
    if len(blob) % RECORD.itemsize:
        raise ValueError(f"a block of {len(blob)} bytes is not whole {RECORD.itemsize}-byte "
                         "records: the index is damaged")
    return np.frombuffer(blob, dtype=RECORD)


def group(recs: np.ndarray, shift: int) -> list[tuple[int, bytes]]:
    """``(key, postings)`` per bucket of ``shift`` touched by ``recs``, in key order.

    Key order lets concurrent writers lock rows in the same order (no deadlocks).
    """
    return [block for part in grouped(recs, shift) for block in part]


def grouped(recs: np.ndarray, shift: int, *,
            slice_postings: int = 2_000_000) -> Iterator[list[tuple[int, bytes]]]:
    """``group`` in key-ordered slices of about ``slice_postings`` postings.

    A bucket never straddles two slices, so a bulk load writes each block once
    while holding only one slice's bytes at a time.
    """
    n = recs.shape[0]
    if n == 0:
        return
    keys = keys_for(recs["hash"], shift)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    start = 0
    while start < n:
        end = min(start + slice_postings, n)
        if end < n:  # cut after the last posting of the bucket the slice ends in
            end = int(np.searchsorted(keys, keys[end - 1], side="right"))
        yield _blocks(recs[order[start:end]], keys[start:end])
        start = end


def _blocks(recs: np.ndarray, keys: I64) -> list[tuple[int, bytes]]:
    """Key-sorted records cut into one ``(key, postings)`` per key."""
    blob = recs.tobytes()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    size = RECORD.itemsize
    ends = np.r_[starts[1:], keys.shape[0]] * size
    return [(int(keys[s]), blob[s * size:e])
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def without_track(blob: bytes, track_id: int) -> bytes | None:
    """``blob`` minus the postings of ``track_id``; None when it is unchanged."""
    recs = decode(blob)
    keep = recs["track"] != track_id
    if keep.all():
        return None
    kept: bytes = recs[keep].tobytes()
    return kept
