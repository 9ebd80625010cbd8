"""The index interface and an in-memory implementation.

An index is a multiset of rows ``(hash uint32, track_id int32, t int32)``;
a lookup returns every row whose hash is among the query's.  That is exactly a
SQL table ``(hash int, track_id int, t int)`` with a b-tree on ``hash``, so a
database-backed index only has to implement ``add``/``remove``/``lookup``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from pipelines.fingerprint.landmarks import Fingerprint

I32 = npt.NDArray[np.int32]
U32 = npt.NDArray[np.uint32]

#: Hashes held by more rows than this are skipped at lookup: they are too
#: common to tell tracks apart and would only cost time (a "stop word" cut).
MAX_POSTINGS = 2000


@dataclass(frozen=True)
class Hits:
    """Rows found for a lookup.

    ``query_pos[i]`` is the position, in the hashes passed to ``lookup``, of the
    hash that found row ``(track_ids[i], times[i])``.
    """

    query_pos: npt.NDArray[np.int64]
    track_ids: I32
    times: I32

    def __len__(self) -> int:
        return int(self.track_ids.shape[0])


def empty_hits() -> Hits:
    return Hits(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32))


class Index(Protocol):
    """Where reference fingerprints live.  Implementations: in memory, SQL."""

    def add(self, track_id: int, fp: Fingerprint) -> None:
        """Store ``fp``'s rows under ``track_id`` (replacing any previous ones)."""

    def remove(self, track_id: int) -> None:
        """Forget every row of ``track_id`` (no error if it has none)."""

    def lookup(self, hashes: U32) -> Hits:
        """Every stored row whose hash is in ``hashes``."""


class InMemoryIndex:
    """Sorted arrays, rebuilt lazily after changes.  For tests and benchmarks.

    ``add`` and ``remove`` are O(1) until the next ``lookup``, which re-sorts
    everything once (so bulk loading is one sort).
    """

    def __init__(self, max_postings: int = MAX_POSTINGS) -> None:
        self._tracks: dict[int, tuple[U32, I32]] = {}
        self._max_postings = max_postings
        self._dirty = True
        self._hashes: U32 = np.zeros(0, np.uint32)
        self._track_ids: I32 = np.zeros(0, np.int32)
        self._times: I32 = np.zeros(0, np.int32)

    def add(self, track_id: int, fp: Fingerprint) -> None:
        self.add_arrays(track_id, fp.hashes, fp.times)

    def add_arrays(self, track_id: int, hashes: U32, times: I32) -> None:
        """Like ``add`` from raw arrays (used to fill an index with synthetic rows)."""
        if hashes.shape != times.shape:
            raise ValueError("hashes and times must have the same shape")
        self._tracks[int(track_id)] = (
            np.ascontiguousarray(hashes, np.uint32),
            np.ascontiguousarray(times, np.int32),
        )
        self._dirty = True

    def remove(self, track_id: int) -> None:
        if self._tracks.pop(int(track_id), None) is not None:
            self._dirty = True

    def __len__(self) -> int:
        """Number of tracks."""
        return len(self._tracks)

    @property
    def row_count(self) -> int:
        return sum(h.shape[0] for h, _ in self._tracks.values())

    def _rebuild(self) -> None:
        if not self._tracks:
            self._hashes = np.zeros(0, np.uint32)
            self._track_ids = np.zeros(0, np.int32)
            self._times = np.zeros(0, np.int32)
        else:
            ids = list(self._tracks)
            hashes = np.concatenate([self._tracks[i][0] for i in ids])
            times = np.concatenate([self._tracks[i][1] for i in ids])
            counts = [self._tracks[i][0].shape[0] for i in ids]
            track_ids = np.repeat(np.asarray(ids, dtype=np.int32), counts)
            order = np.argsort(hashes, kind="stable")
            self._hashes = hashes[order]
            self._track_ids = track_ids[order]
            self._times = times[order]
        self._dirty = False

    def lookup(self, hashes: U32) -> Hits:
        if self._dirty:
            self._rebuild()
        return lookup_sorted(
            self._hashes, self._track_ids, self._times, hashes, self._max_postings
        )


def lookup_sorted(
    sorted_hashes: U32, track_ids: I32, times: I32, query: U32, max_postings: int = MAX_POSTINGS
) -> Hits:
    """Rows of hash-sorted parallel arrays whose hash is in ``query``.

    Hashes with more than ``max_postings`` rows are skipped.
    """
    q = np.asarray(query, dtype=np.uint32)
    if q.size == 0 or sorted_hashes.size == 0:
        return empty_hits()
    lo = np.searchsorted(sorted_hashes, q, side="left")
    hi = np.searchsorted(sorted_hashes, q, side="right")
    counts = hi - lo
    counts[counts > max_postings] = 0
    total = int(counts.sum())
    if total == 0:
        return empty_hits()
    query_pos = np.repeat(np.arange(q.size, dtype=np.int64), counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    rows = starts + np.arange(total)
    return Hits(query_pos, track_ids[rows], times[rows])
