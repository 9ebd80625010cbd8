"""The fingerprint index in the database, and what its tracks are.

The engine (:mod:`pipelines.fingerprint`) extracts and matches; it looks postings
up through a small ``Index`` interface. :class:`SqlIndex` implements that
interface over ``fingerprint_blocks``: postings ``(hash, track_id, t)`` packed one
row per hash bucket, the bucket width fitted to the index's size
(:mod:`soundkit.postings`). The same SQL serves PostgreSQL and SQLite:

* writing appends each bucket's new records to its row (``INSERT … ON CONFLICT
  DO UPDATE SET postings = postings || …``), one statement for a whole track;
* a lookup reads the rows of the query's buckets by primary key (binary results
  on PostgreSQL) and numpy keeps the postings whose hash was asked;
* :func:`repack_index` (beat, and after ``catalog add``) rebuilds the blocks in a
  narrower or wider layout when the index has outgrown its own, online.

``track_id`` is a :class:`FingerprintTrack` id, which says whether the track is a
creator's sound or a protected catalog track. Deleting a track rewrites the
blocks of its buckets, found from the track's own list of distinct hashes kept
(compressed) on its ``fingerprint_tracks`` row. Deleting a sound anywhere
(:func:`soundkit.library.delete_sound`) removes its postings through the
on-delete hook registered at the bottom of this module.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipelines import (
    ANALYSIS_SAMPLE_RATE,
    MediaLimits,
    MediaProcessingError,
    MediaRejected,
    decode_analysis,
    job_workdir,
    load_analysis_pcm,
    probe,
)
from pipelines.fingerprint import (
    HASH_LIMIT,
    MAX_POSTINGS,
    Fingerprint,
    FingerprintError,
    Hits,
    extract,
    match,
)
from pipelines.fingerprint.index import empty_hits, lookup_sorted
from soundkit import postings
from soundkit.db import Database
from soundkit.library import on_sound_delete
from soundkit.models import (
    CatalogTrack,
    FingerprintKind,
    FingerprintLayout,
    FingerprintTrack,
    Sound,
    fingerprint_blocks,
)
from soundkit.settings import Settings

U32 = npt.NDArray[np.uint32]
I32 = npt.NDArray[np.int32]

#: Hashes per ``IN (…)`` on SQLite: far below its bound-parameter limit.
SQLITE_CHUNK = 500
#: Blocks per ``INSERT … ON CONFLICT`` statement on PostgreSQL.
PG_BATCH = 50_000
#: Longest file ``catalog add`` and ``identify`` accept (uploads keep their own bound).
CATALOG_MAX_DURATION_S = 1800.0
#: Shortest: a clip to identify may be shorter than an accepted upload.
CATALOG_MIN_DURATION_S = 1.0

_BLOCKS = fingerprint_blocks.name
_LAYOUT_ID = 1
#: Blocks moved per transaction when the layout is rebuilt.
REPACK_BATCH = 20_000
_PG_APPEND = (f"INSERT INTO {_BLOCKS} (key, postings) "  # noqa: S608
              "SELECT u.k, u.p FROM unnest(CAST(%(keys)s AS bigint[]), "
              "CAST(%(blobs)s AS bytea[])) AS u(k, p) ORDER BY u.k "
              f"ON CONFLICT (key) DO UPDATE SET postings = {_BLOCKS}.postings || EXCLUDED.postings")
_SQLITE_APPEND = (f"INSERT INTO {_BLOCKS} (key, postings) VALUES (?, ?) "  # noqa: S608
                  "ON CONFLICT(key) DO UPDATE SET postings = CAST(postings || excluded.postings "
                  "AS BLOB)")


# --- The hash list kept on each track ---------------------------------------------------------


def encode_hash_list(hashes: U32) -> bytes:
    """A track's distinct hashes, sorted and delta-coded, then zlib: ~2-3 bytes each."""
    distinct = np.unique(np.asarray(hashes, dtype=np.uint32))
    deltas = np.diff(distinct, prepend=np.uint32(0)).astype("<u4")
    return zlib.compress(deltas.tobytes(), 6)


def decode_hash_list(blob: bytes) -> U32:
    deltas = np.frombuffer(zlib.decompress(blob), dtype="<u4")
    out: U32 = np.cumsum(deltas, dtype=np.uint64).astype(np.uint32)
    return out


# --- The index ------------------------------------------------------------------------------


def hits_for(query: U32, distinct: U32, recs: np.ndarray,
             max_postings: int = MAX_POSTINGS) -> Hits:
    """The engine's ``Hits`` for ``query`` from the records of the blocks it read.

    A block holds the postings of its whole bucket, most of them for hashes the
    query did not ask for: those are dropped first (one binary search of each
    record's hash among ``distinct``, the query's sorted distinct hashes), so only
    the few left are sorted. ``Hits`` is per position in the query (a hash asked twice finds its
    postings twice), and hashes with more than ``max_postings`` postings are
    dropped: they are too common to tell tracks apart.
    """
    found = recs["hash"].astype(np.uint32)
    at = np.searchsorted(distinct, found)
    at[at == distinct.size] = 0
    asked = np.flatnonzero(distinct[at] == found)
    order = asked[np.argsort(found[asked], kind="stable")]
    return lookup_sorted(found[order], recs["track"][order].astype(np.int32),
                         recs["t"][order].astype(np.int32), query, max_postings)


@dataclass(frozen=True)
class Layout:
    """The index's layout row (see :class:`FingerprintLayout`)."""

    shift: int
    previous_shift: int | None
    postings: int

    @property
    def shifts(self) -> tuple[int, ...]:
        """Layouts that may hold postings: the current one, and the one being left."""
        if self.previous_shift is None or self.previous_shift == self.shift:
            return (self.shift,)
        return (self.shift, self.previous_shift)


@dataclass(frozen=True)
class _KeyArray:
    """Block keys to send to PostgreSQL as one binary ``bigint[]``."""

    keys: npt.NDArray[np.int64]


class _KeyArrayDumper(Dumper):
    """Binary ``bigint[]`` from numpy: a 20-byte header, then (length, value) pairs.

    psycopg would otherwise dump a list of Python ints one element at a time.
    """

    format = Format.BINARY
    oid = 1016  # bigint[]

    def dump(self, obj: _KeyArray) -> bytes:
        keys = np.ascontiguousarray(obj.keys, dtype=np.int64)
        header = np.array([1, 0, 20, keys.size, 1], dtype=">i4")  # ndim, nulls, int8, n, lbound
        body = np.empty(keys.size, dtype=[("size", ">i4"), ("value", ">i8")])
        body["size"] = 8
        body["value"] = keys
        return header.tobytes() + body.tobytes()


class SqlIndex:
    """The engine's ``Index`` over a database connection (PostgreSQL or SQLite).

    Postings live packed in ``fingerprint_blocks``, one row per hash bucket
    (:mod:`soundkit.postings`). Works inside the caller's transaction: pass a
    ``Session`` (its connection is used) or a plain SQLAlchemy ``Connection``;
    nothing here commits. ``add`` replaces a track's postings; ``bulk_add`` only
    appends (for tracks known to be new, e.g. a benchmark's synthetic filler).

    Every write first locks the layout row, so a write never lands in a layout a
    rebuild (:func:`repack_index`) has already left behind.
    """

    def __init__(self, bind: Session | Connection, *, max_postings: int = MAX_POSTINGS) -> None:
        self._conn: Connection = bind.connection() if isinstance(bind, Session) else bind
        self.dialect = self._conn.dialect.name
        if self.dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"no fingerprint index for {self.dialect!r} databases")
        self.max_postings = max_postings

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    # -- the layout row --

    def layout(self) -> Layout:
        """The layout as this transaction sees it (an empty index's when there is no row)."""
        row = self._conn.execute(select(FingerprintLayout.shift, FingerprintLayout.previous_shift,
                                        FingerprintLayout.postings)
                                 .where(FingerprintLayout.id == _LAYOUT_ID)).first()
        if row is None:
            return Layout(postings.MAX_SHIFT, None, 0)
        return Layout(int(row.shift), row.previous_shift, int(row.postings))

    def lock_layout(self, change: int = 0) -> Layout:
        """Lock the layout row until this transaction ends, adding ``change`` postings."""
        statement = (update(FingerprintLayout).where(FingerprintLayout.id == _LAYOUT_ID)
                     .values(postings=FingerprintLayout.postings + change)
                     .returning(FingerprintLayout.shift, FingerprintLayout.previous_shift,
                                FingerprintLayout.postings))
        row = self._conn.execute(statement).first()
        if row is None:  # a database emptied by hand: start an empty index's layout
            self._conn.execute(insert(FingerprintLayout).values(
                id=_LAYOUT_ID, shift=postings.MAX_SHIFT, previous_shift=None, postings=0))
            row = self._conn.execute(statement).first()
        assert row is not None
        return Layout(int(row.shift), row.previous_shift, int(row.postings))

    # -- writing --

    def add(self, track_id: int, fp: Fingerprint) -> None:
        """Store ``fp``'s postings under ``track_id``, replacing any previous ones."""
        self.add_arrays(track_id, fp.hashes, fp.times)

    def add_arrays(self, track_id: int, hashes: U32, times: I32) -> None:
        """Like ``add`` from raw arrays; keeps the track's hash list if it is registered."""
        if np.shape(hashes) != np.shape(times):
            raise ValueError("hashes and times must have the same shape")
        self.remove(track_id)
        self.bulk_add([(track_id, hashes, times)])
        self._conn.execute(
            update(FingerprintTrack).where(FingerprintTrack.id == track_id)
            .values(hash_count=int(np.size(hashes)),
                    hash_list=encode_hash_list(np.asarray(hashes, dtype=np.uint32))))

    def bulk_add(self, tracks: Iterable[tuple[int, U32, I32]], *,
                 batch_postings: int = 500_000) -> int:
        """Append the postings of many tracks; returns how many were written.

        Nothing is replaced and no hash list is kept: meant for ids that are not
        registered in ``fingerprint_tracks`` (benchmark filler), or for ``add``.
        Each batch rewrites every block it touches, so bigger batches write less.
        """
        written = 0
        batch: list[tuple[int, U32, I32]] = []
        size = 0
        for track in tracks:
            batch.append(track)
            size += int(np.size(track[1]))
            if size >= batch_postings:
                written += self._write(batch)
                batch, size = [], 0
        if batch:
            written += self._write(batch)
        return written

    def _write(self, batch: list[tuple[int, U32, I32]]) -> int:
        counts = [int(np.size(h)) for _, h, _ in batch]
        total = sum(counts)
        if total == 0:
            return 0
        recs = postings.records(
            np.concatenate([np.asarray(h, dtype=np.uint32) for _, h, _ in batch]),
            np.repeat(np.asarray([i for i, _, _ in batch], dtype=np.int32), counts),
            np.concatenate([np.asarray(t, dtype=np.int32) for _, _, t in batch]))
        batch.clear()  # the records hold the postings now: let the arrays go
        layout = self.lock_layout(total)
        for part in postings.grouped(recs, layout.shift):
            self.append_blocks(part)
        return total

    def append_blocks(self, blocks: Sequence[tuple[int, bytes]]) -> None:
        """Append each ``(key, postings)`` to its row (creating the rows that are new)."""
        if not blocks:
            return
        if self.is_postgresql:
            for start in range(0, len(blocks), PG_BATCH):
                part = blocks[start:start + PG_BATCH]
                self._conn.exec_driver_sql(_PG_APPEND, {"keys": [k for k, _ in part],
                                                        "blobs": [b for _, b in part]})
        else:
            self._conn.exec_driver_sql(_SQLITE_APPEND, list(blocks))

    def remove(self, track_id: int) -> None:
        """Forget every posting of ``track_id`` (no error if it has none).

        A registered track's blocks are the buckets of the distinct hashes on its
        hash list (a registered track without one was never indexed: nothing to
        do). The postings of an id that is not registered at all (``bulk_add``
        filler) can only be found by reading every block.
        """
        row = self._conn.execute(select(FingerprintTrack.id, FingerprintTrack.hash_list)
                                 .where(FingerprintTrack.id == track_id)).first()
        if row is not None and row.hash_list is None:
            return
        layout = self.lock_layout()
        if row is None:
            removed = self._remove_scanning(track_id)
        else:
            hashes = decode_hash_list(row.hash_list)
            keys = np.unique(np.concatenate([postings.keys_for(hashes, s)
                                             for s in layout.shifts]))
            removed = self._rewrite_without(self._blocks(keys.tolist(), lock=True), track_id)
        if removed:
            self.lock_layout(-removed)

    def _remove_scanning(self, track_id: int) -> int:
        return sum(self._rewrite_without(page, track_id) for page in self._all_blocks())

    def _all_blocks(self) -> Iterator[list[tuple[int, bytes]]]:
        """Every block, in key order, ``REPACK_BATCH`` at a time.

        Each page is read when the previous one has been dealt with, so a caller may
        rewrite or delete the blocks of a page before asking for the next.
        """
        after = -1
        while True:
            rows = self._conn.execute(
                select(fingerprint_blocks.c.key, fingerprint_blocks.c.postings)
                .where(fingerprint_blocks.c.key > after).order_by(fingerprint_blocks.c.key)
                .limit(REPACK_BATCH)).all()
            if not rows:
                return
            yield [(int(k), bytes(b)) for k, b in rows]
            after = int(rows[-1][0])

    def _rewrite_without(self, blocks: Sequence[tuple[int, bytes]], track_id: int) -> int:
        """Rewrite ``blocks`` without ``track_id``'s postings; returns how many went."""
        changed: list[tuple[bytes, int]] = []
        emptied: list[int] = []
        removed = 0
        for key, blob in blocks:
            kept = postings.without_track(blob, track_id)
            if kept is None:
                continue
            removed += (len(blob) - len(kept)) // postings.RECORD.itemsize
            if kept:
                changed.append((kept, key))
            else:
                emptied.append(key)
        table = fingerprint_blocks
        if changed:
            self._conn.execute(update(table).where(table.c.key == bindparam("k"))
                               .values(postings=bindparam("p")),
                               [{"k": k, "p": p} for p, k in changed])
        for start in range(0, len(emptied), SQLITE_CHUNK):
            self._conn.execute(delete(table).where(
                table.c.key.in_(emptied[start:start + SQLITE_CHUNK])))
        return removed

    # -- reading --

    def _blocks(self, keys: list[int], *, lock: bool = False) -> list[tuple[int, bytes]]:
        """``(key, postings)`` of the blocks among ``keys`` that exist."""
        if not keys:
            return []
        if self.is_postgresql:
            sql = f"SELECT key, postings FROM {_BLOCKS} WHERE key = ANY(%(keys)b)"  # noqa: S608
            rows = self._conn.exec_driver_sql(sql + (" ORDER BY key FOR UPDATE" if lock else ""),
                                              {"keys": keys}).all()
        else:
            rows = []
            for start in range(0, len(keys), SQLITE_CHUNK):
                part = keys[start:start + SQLITE_CHUNK]
                marks = ",".join("?" * len(part))
                rows += self._conn.exec_driver_sql(
                    f"SELECT key, postings FROM {_BLOCKS} WHERE key IN ({marks})",  # noqa: S608
                    tuple(part)).all()
        return [(int(k), bytes(b)) for k, b in rows]

    def _lookup_pg(self, keys: npt.NDArray[np.int64]) -> bytes:
        """The postings of the blocks of ``keys`` end to end, the way a lookup needs it fast.

        The keys go as one binary ``bigint[]`` laid out by numpy; the server joins
        the blocks into one binary value (thousands of rows would each cost a
        Python object on the way back).
        """
        raw: Any = self._conn.connection.driver_connection
        with raw.cursor(binary=True) as cursor:
            cursor.adapters.register_dumper(_KeyArray, _KeyArrayDumper)
            cursor.execute(f"SELECT string_agg(postings, ''::bytea) FROM {_BLOCKS} "  # noqa: S608
                           "WHERE key = ANY(%(keys)b)", {"keys": _KeyArray(keys)})
            row = cursor.fetchone()
            return bytes(row[0]) if row is not None and row[0] is not None else b""

    def lookup(self, hashes: U32) -> Hits:
        """Every stored posting whose hash is in ``hashes`` (too-common hashes left out)."""
        query = np.asarray(hashes, dtype=np.uint32)
        if query.size == 0:
            return empty_hits()
        distinct = np.unique(query)
        keys = np.unique(np.concatenate([postings.keys_for(distinct, s)
                                         for s in self.layout().shifts]))
        blob = (self._lookup_pg(keys) if self.is_postgresql
                else b"".join(blob for _, blob in self._blocks(keys.tolist())))
        if not blob:
            return empty_hits()
        return hits_for(query, distinct, postings.decode(blob), self.max_postings)

    def posting_count(self, track_id: int | None = None) -> int:
        """Postings stored (of one track, or in all), by reading every block: for tests."""
        total = 0
        for page in self._all_blocks():
            for _, blob in page:
                recs = postings.decode(blob)
                total += int(recs.shape[0] if track_id is None
                             else np.count_nonzero(recs["track"] == track_id))
        return total


# --- Registering and forgetting tracks ----------------------------------------------------------


#: Key of the PostgreSQL advisory lock under which tracks are registered in the index.
INDEXING_LOCK_KEY = 0x534B_4650


def serialise_indexing(session: Session) -> None:
    """Hold the indexing lock until this transaction ends.

    Every new ``FingerprintTrack`` is created under it, so track ids grow in commit
    order and ``newest_track_id`` tells a job whether anything was indexed since it
    matched. PostgreSQL only: on SQLite a writing transaction already holds the
    database's write lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(INDEXING_LOCK_KEY)))


def newest_track_id(session: Session) -> int:
    """The highest fingerprint track id; a track indexed later has a higher one."""
    return int(session.scalar(select(func.max(FingerprintTrack.id))) or 0)


def index_sound(session: Session, sound_id: str, fp: Fingerprint) -> FingerprintTrack:
    """Index a sound that is being attached (inside the attach transaction)."""
    serialise_indexing(session)
    track = session.scalar(select(FingerprintTrack).where(FingerprintTrack.sound_id == sound_id))
    if track is None:
        track = FingerprintTrack(kind=FingerprintKind.SOUND, sound_id=sound_id)
        session.add(track)
        session.flush()
    SqlIndex(session).add(track.id, fp)
    session.expire(track, ["hash_count", "hash_list"])  # written by the index, not the ORM
    return track


def remove_sound_fingerprint(session: Session, sound_id: str) -> bool:
    """Forget a sound's hashes; True if it was indexed."""
    track = session.scalar(select(FingerprintTrack).where(FingerprintTrack.sound_id == sound_id))
    if track is None:
        return False
    _forget(session, track)
    return True


def _forget(session: Session, track: FingerprintTrack) -> None:
    SqlIndex(session).remove(track.id)
    session.execute(delete(FingerprintTrack).where(FingerprintTrack.id == track.id)
                    .execution_options(synchronize_session=False))


@on_sound_delete
def _forget_deleted_sound(session: Session, sound: Sound) -> None:
    """``library.delete_sound`` hook: a deleted sound can no longer be matched."""
    remove_sound_fingerprint(session, sound.id)


def find_catalog_track(session: Session, sha256: str) -> CatalogTrack | None:
    return session.scalar(select(CatalogTrack).where(CatalogTrack.sha256 == sha256))


def add_catalog_track(session: Session, *, title: str, rights_holder: str, sha256: str,
                      fp: Fingerprint, duration_s: float,
                      source_name: str | None = None) -> CatalogTrack:
    """Register a protected track and index it (the caller commits)."""
    track = CatalogTrack(title=title[:300], rights_holder=rights_holder[:200], sha256=sha256,
                         duration_s=round(duration_s, 3),
                         source_name=source_name[:500] if source_name else None)
    session.add(track)
    session.flush()
    serialise_indexing(session)
    indexed = FingerprintTrack(kind=FingerprintKind.CATALOG, catalog_track_id=track.id)
    session.add(indexed)
    session.flush()
    SqlIndex(session).add(indexed.id, fp)
    session.expire(indexed, ["hash_count", "hash_list"])
    return track


def remove_catalog_track(session: Session, catalog_track_id: int) -> CatalogTrack | None:
    """Delete a catalog track and its hashes; None if there is no such track."""
    track = session.get(CatalogTrack, catalog_track_id)
    if track is None:
        return None
    indexed = session.scalar(select(FingerprintTrack)
                             .where(FingerprintTrack.catalog_track_id == catalog_track_id))
    if indexed is not None:
        _forget(session, indexed)
    session.delete(track)
    session.flush()
    return track


@dataclass(frozen=True)
class CatalogEntry:
    track: CatalogTrack
    hash_count: int


def list_catalog(session: Session) -> list[CatalogEntry]:
    rows = session.execute(
        select(CatalogTrack, FingerprintTrack.hash_count)
        .outerjoin(FingerprintTrack, FingerprintTrack.catalog_track_id == CatalogTrack.id)
        .order_by(CatalogTrack.id)).all()
    return [CatalogEntry(track, count or 0) for track, count in rows]


# --- Identifying ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identified:
    """A match resolved to what it is: a catalog track or a creator's sound."""

    kind: FingerprintKind
    id: int | str  # catalog track id, or sound id
    title: str
    score: float
    offset_s: float
    speed: float
    matched: int
    rights_holder: str | None = None  # catalog tracks
    owner_id: int | None = None  # sounds

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"kind": str(self.kind), "id": self.id, "title": self.title,
                                 "score": self.score, "offset_s": round(self.offset_s, 2),
                                 "speed": round(self.speed, 4)}
        if self.rights_holder is not None:
            found["rights_holder"] = self.rights_holder
        return found


def identify(session: Session, query: Fingerprint, *, exclude_sound_id: str | None = None,
             limit: int = 5) -> list[Identified]:
    """Match ``query`` (from ``extract(..., query=True)``) and say what each match is.

    Rows whose track no longer exists (a sound removed without the library hook)
    are ignored, as is ``exclude_sound_id`` (the sound being ingested, on a re-run).
    """
    matches = match(query, SqlIndex(session), limit=limit)
    if not matches:
        return []
    rows = session.execute(
        select(FingerprintTrack, Sound, CatalogTrack)
        .outerjoin(Sound, Sound.id == FingerprintTrack.sound_id)
        .outerjoin(CatalogTrack, CatalogTrack.id == FingerprintTrack.catalog_track_id)
        .where(FingerprintTrack.id.in_([m.track_id for m in matches]))).all()
    known = {track.id: (sound, catalog) for track, sound, catalog in rows}
    found: list[Identified] = []
    for m in matches:
        sound, catalog = known.get(m.track_id, (None, None))
        if catalog is not None:
            found.append(Identified(FingerprintKind.CATALOG, catalog.id, catalog.title,
                                    m.score, m.offset_s, m.speed, m.matched,
                                    rights_holder=catalog.rights_holder))
        elif sound is not None and sound.id != exclude_sound_id:
            found.append(Identified(FingerprintKind.SOUND, sound.id, sound.title,
                                    m.score, m.offset_s, m.speed, m.matched,
                                    owner_id=sound.owner_id))
    return found


# --- Files (command line) ------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysedFile:
    fingerprint: Fingerprint
    duration_s: float


def file_limits(settings: Settings) -> MediaLimits:
    """Validation bounds for files an operator registers or identifies."""
    return MediaLimits(min_duration_s=CATALOG_MIN_DURATION_S,
                       max_duration_s=CATALOG_MAX_DURATION_S,
                       timeout_s=settings.ffmpeg_timeout_s, ffmpeg=settings.ffmpeg,
                       ffprobe=settings.ffprobe,
                       max_file_size_bytes=settings.max_upload_bytes)


def analyse_file(path: Path, limits: MediaLimits, *, query: bool = False) -> AnalysedFile:
    """Validate and decode ``path`` as uploads are, then fingerprint it.

    Raises ``MediaRejected`` (with the same reasons as an upload) for files that
    are not acceptable audio, ``MediaProcessingError`` when ffmpeg fails.
    """
    with job_workdir(None) as workdir:
        probed = probe(path, limits)
        pcm = load_analysis_pcm(decode_analysis(path, probed, workdir, limits))
    return AnalysedFile(extract(pcm, ANALYSIS_SAMPLE_RATE, query=query),
                        pcm.size / ANALYSIS_SAMPLE_RATE)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def catalog_hashes(session: Session) -> dict[str, int]:
    """SHA-256 of every registered file, with its catalog track id."""
    rows = session.execute(select(CatalogTrack.sha256, CatalogTrack.id)).all()
    return {sha: track_id for sha, track_id in rows}


@dataclass(frozen=True)
class Prepared:
    """One file of ``catalog add`` after the slow part (hashing, decoding, extracting)."""

    path: Path
    sha256: str | None = None
    analysed: AnalysedFile | None = None
    reason: str | None = None  # why it failed
    detail: str | None = None


def prepare_catalog_file(path: Path, limits: MediaLimits, known: Mapping[str, int]) -> Prepared:
    """Hash, validate, decode and fingerprint a file; never raises for a bad file.

    Runs in worker threads (ffmpeg and numpy release the GIL); a file whose SHA-256
    is already in ``known`` is not decoded at all.
    """
    try:
        sha = file_sha256(path)
        if sha in known:
            return Prepared(path, sha)
        analysed = analyse_file(path, limits)
    except MediaRejected as rejected:
        return Prepared(path, reason=rejected.reason, detail=rejected.detail)
    except MediaProcessingError as error:
        return Prepared(path, reason="processing_error", detail=error.detail)
    except (OSError, FingerprintError) as error:
        return Prepared(path, reason="unreadable", detail=f"{type(error).__name__}: {error}")
    if len(analysed.fingerprint) == 0:
        return Prepared(path, sha, reason="no_fingerprint",
                        detail="silent, or too short or quiet to fingerprint")
    return Prepared(path, sha, analysed)


def register_prepared(database: Database, prepared: Prepared, rights_holder: str,
                      known: dict[str, int]) -> tuple[str, dict[str, Any]]:
    """Store one prepared file; returns ``("added" | "skipped" | "failed", summary)``.

    Each file is its own transaction, so one failure never undoes the others.
    """
    path = str(prepared.path)
    if prepared.reason is not None or prepared.sha256 is None:
        return "failed", {"path": path, "reason": prepared.reason, "detail": prepared.detail}
    if prepared.sha256 in known or prepared.analysed is None:
        return "skipped", {"path": path, "catalog_track_id": known.get(prepared.sha256)}
    analysed = prepared.analysed
    title = prepared.path.stem.strip() or prepared.path.name
    try:
        with database.session() as session:
            track = add_catalog_track(session, title=title, rights_holder=rights_holder,
                                      sha256=prepared.sha256, fp=analysed.fingerprint,
                                      duration_s=analysed.duration_s,
                                      source_name=prepared.path.name)
            track_id = track.id
    except IntegrityError:  # registered meanwhile by another run
        with database.session() as session:
            existing = find_catalog_track(session, prepared.sha256)
        return "skipped", {"path": path, "catalog_track_id": existing.id if existing else None}
    known[prepared.sha256] = track_id
    return "added", {"path": path, "id": track_id, "title": title,
                     "duration_s": round(analysed.duration_s, 2),
                     "hashes": len(analysed.fingerprint)}


def refresh_statistics(session: Session) -> None:
    """After a bulk load, let PostgreSQL's planner see the new rows (or it may scan)."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {_BLOCKS}")


# --- Keeping the layout fitted to the index's size ------------------------------------------------


def repack_index(engine: Engine, *, expected_postings: int = 0,
                 batch: int = REPACK_BATCH) -> bool:
    """Rebuild the blocks in the layout that fits the index's size; True if it had to.

    ``expected_postings`` fits the layout to a size the index is about to reach
    (before a bulk load), so the load writes each block once. Online and
    resumable: blocks move ``batch`` at a time, each batch in its own transaction
    under the layout lock (writes wait only for one batch), lookups read both
    layouts meanwhile, and an interrupted rebuild is carried on by the next call.
    """
    with engine.begin() as conn:
        layout = SqlIndex(conn).lock_layout()
        old, new = layout.previous_shift, layout.shift
        if old is None:
            target = postings.refit(layout.shift, max(layout.postings, expected_postings))
            if target is None:
                return False
            old, new = layout.shift, target
            conn.execute(update(FingerprintLayout).where(FingerprintLayout.id == _LAYOUT_ID)
                         .values(shift=new, previous_shift=old))
    blocks = fingerprint_blocks
    first, end = int(postings.block_key(old, 0)), int(postings.block_key(old + 1, 0))
    while True:
        with engine.begin() as conn:
            index = SqlIndex(conn)
            index.lock_layout()
            rows = conn.execute(select(blocks.c.key, blocks.c.postings)
                                .where(blocks.c.key >= first, blocks.c.key < end)
                                .order_by(blocks.c.key).limit(batch)).all()
            if not rows:
                conn.execute(update(FingerprintLayout).where(FingerprintLayout.id == _LAYOUT_ID)
                             .values(previous_shift=None))
                return True
            last = int(rows[-1][0])
            conn.execute(delete(blocks).where(blocks.c.key >= first, blocks.c.key <= last))
            recs = postings.decode(b"".join(bytes(blob) for _, blob in rows))
            index.append_blocks(postings.group(recs, new))
            first = last + 1


# --- Measuring (tests, benchmark) ----------------------------------------------------------------


def index_size_bytes(conn: Connection) -> int:
    """Bytes the index occupies on disk: its blocks, its layout row and the track table.

    PostgreSQL: ``pg_total_relation_size`` (heap, indexes, TOAST). SQLite: the
    pages of those tables and their indexes, from the ``dbstat`` virtual table.
    """
    tables = (_BLOCKS, FingerprintLayout.__tablename__, FingerprintTrack.__tablename__)
    if conn.dialect.name == "postgresql":
        total = conn.exec_driver_sql(
            "SELECT pg_total_relation_size(%(a)s) + pg_total_relation_size(%(b)s) "
            "+ pg_total_relation_size(%(c)s)", dict(zip("abc", tables, strict=True))).scalar()
    else:
        total = conn.exec_driver_sql(
            "SELECT SUM(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name "
            "WHERE m.tbl_name IN (?, ?, ?)", tables).scalar()
    return int(total or 0)


def synthetic_tracks(n_tracks: int, *, rows_per_track: int = 2500, first_id: int = 1,
                     hash_limit: int = HASH_LIMIT, seed: int = 0,
                     frames: int = 7800) -> Iterator[tuple[int, U32, I32]]:
    """Filler tracks of uniformly random hashes for sizing an index (not for matching).

    2,500 rows is about two minutes of audio at the engine's reference density;
    7,800 frames is three minutes of anchor times. Hashes cover the engine's range.
    """
    rng = np.random.default_rng(seed)
    for track_id in range(first_id, first_id + n_tracks):
        hashes = rng.integers(0, hash_limit, rows_per_track, dtype=np.uint32)
        times = np.sort(rng.integers(0, frames, rows_per_track, dtype=np.int32))
        yield track_id, hashes, times


def fill_synthetic(engine: Engine, n_tracks: int, *, rows_per_track: int = 2500,
                   first_id: int = 1_000_000, seed: int = 0) -> int:
    """Append ``n_tracks`` filler tracks to the index behind ``engine``; returns the rows.

    For benchmarks on a scratch database migrated to head: the filler ids start far
    above real ones and are not registered in ``fingerprint_tracks``, so ``identify``
    ignores them while ``match`` still has to read their postings.
    """
    tracks = synthetic_tracks(n_tracks, rows_per_track=rows_per_track, first_id=first_id,
                              seed=seed)
    return bulk_import(engine, tracks, new_postings=n_tracks * rows_per_track)


#: Postings per batch of a bulk import: each batch appends once to every block it touches.
BULK_BATCH = 20_000_000


def bulk_import(engine: Engine, tracks: Iterable[tuple[int, U32, I32]], *, new_postings: int,
                batch_postings: int = BULK_BATCH) -> int:
    """Append many tracks' postings in one transaction; returns how many were written.

    The layout is first fitted to the size the index is about to reach (about
    ``new_postings`` more), so the load writes into the final layout; postings then
    go in batches of ``batch_postings``, each rewriting every block it touches once
    (about 28 bytes of memory a posting), then ``ANALYZE``. A ``VACUUM`` afterwards
    (``vacuum_index``) lets later writes reuse the old versions' space.
    """
    with engine.connect() as conn:
        have = SqlIndex(conn).layout().postings
    repack_index(engine, expected_postings=have + new_postings)
    with engine.begin() as conn:
        written = SqlIndex(conn).bulk_add(tracks, batch_postings=batch_postings)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {_BLOCKS}")
    return written


def vacuum_index(engine: Engine) -> None:
    """``VACUUM`` the blocks (PostgreSQL): the space of their old versions is reused."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM {_BLOCKS}")


def lookup_latencies(conn: Connection, queries: Sequence[Fingerprint]) -> list[float]:
    """Seconds taken by ``match`` for each query against the index on ``conn``."""
    index = SqlIndex(conn)
    seconds: list[float] = []
    for query in queries:
        start = time.perf_counter()
        match(query, index)
        seconds.append(time.perf_counter() - start)
    return seconds
