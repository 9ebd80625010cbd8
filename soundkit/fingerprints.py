"""The fingerprint index in the database, and what its tracks are.

The engine (:mod:`pipelines.fingerprint`) extracts and matches; it looks rows up
through a small ``Index`` interface. :class:`SqlIndex` implements that interface
over the ``fingerprint_hashes`` table, a multiset of ``(hash, track_id, t)`` rows
with one b-tree on ``hash``:

* PostgreSQL: rows are bulk-loaded with ``COPY … FROM STDIN (FORMAT BINARY)``
  (the payload is built with numpy, so a track of thousands of rows costs one
  round trip), and looked up with ``hash = ANY(:array)``;
* SQLite: ``executemany`` inserts and ``hash IN (…)`` lookups in chunks.

Hashes are the engine's uint32 stored as signed 32-bit integers (the same bits), so
each row is three 4-byte integers. ``track_id`` is a :class:`FingerprintTrack` id,
which says whether the track is a creator's sound or a protected catalog track.

Deleting a track deletes its rows through the ``hash`` index, using the track's
own list of distinct hashes kept (compressed) on its ``fingerprint_tracks`` row; a
second index on ``track_id`` would cost far more than that list. Deleting a sound
anywhere (:func:`soundkit.library.delete_sound`) removes its rows through the
on-delete hook registered at the bottom of this module.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, delete, func, select, update
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
    MAX_POSTINGS,
    Fingerprint,
    FingerprintError,
    Hits,
    extract,
    match,
)
from soundkit.db import Database
from soundkit.library import on_sound_delete
from soundkit.models import (
    CatalogTrack,
    FingerprintKind,
    FingerprintTrack,
    Sound,
    fingerprint_hashes,
)
from soundkit.settings import Settings

U32 = npt.NDArray[np.uint32]
I32 = npt.NDArray[np.int32]

#: Hashes per ``IN (…)`` on SQLite: far below its bound-parameter limit.
SQLITE_CHUNK = 500
#: Bytes per ``COPY`` write on PostgreSQL.
COPY_BLOCK = 8 * 1024 * 1024
#: Longest file ``catalog add`` and ``identify`` accept (uploads keep their own bound).
CATALOG_MAX_DURATION_S = 1800.0
#: Shortest: a clip to identify may be shorter than an accepted upload.
CATALOG_MIN_DURATION_S = 1.0

_TABLE = fingerprint_hashes.name
_HASH_INDEX = next(iter(fingerprint_hashes.indexes))
_INSERT_SQL = f"INSERT INTO {_TABLE} (hash, track_id, t) VALUES (?, ?, ?)"  # noqa: S608
_COPY_SQL = f"COPY {_TABLE} (hash, track_id, t) FROM STDIN (FORMAT BINARY)"
#: At most ``cap`` rows per query hash (one more than the too-common cut is enough to
#: know a hash is too common), streamed as binary COPY for numpy to parse.
_PG_LOOKUP_COPY = ("COPY (SELECT f.hash, f.track_id, f.t "  # noqa: S608
                   "FROM unnest(CAST(%(hashes)s AS integer[])) AS q(h) "
                   f"CROSS JOIN LATERAL (SELECT hash, track_id, t FROM {_TABLE} "
                   "WHERE hash = q.h LIMIT %(cap)s) AS f) TO STDOUT (FORMAT BINARY)")
_PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_PG_TRAILER = b"\xff\xff"
#: One binary COPY tuple: field count, then (length, value) for each int4 column.
_PG_ROW = np.dtype([("n", ">i2"), ("l_hash", ">i4"), ("hash", ">i4"), ("l_track", ">i4"),
                    ("track", ">i4"), ("l_t", ">i4"), ("t", ">i4")])


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


def _as_signed(hashes: npt.ArrayLike) -> I32:
    """uint32 hashes as the int32 the column stores (same bits)."""
    out: I32 = np.ascontiguousarray(hashes, dtype=np.uint32).view(np.int32)
    return out


def _empty_hits() -> Hits:
    return Hits(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32))


def hits_for(query: U32, found_hashes: U32, found_tracks: I32, found_times: I32,
             max_postings: int = MAX_POSTINGS) -> Hits:
    """Expand rows found for the distinct query hashes to every query position.

    ``Hits`` is per position in the query (a hash asked twice finds its rows
    twice), and hashes with more than ``max_postings`` rows are dropped: they are
    too common to tell tracks apart.
    """
    q = np.asarray(query, dtype=np.uint32)
    if q.size == 0 or found_hashes.size == 0:
        return _empty_hits()
    order = np.argsort(found_hashes, kind="stable")
    hashes, tracks, times = found_hashes[order], found_tracks[order], found_times[order]
    lo = np.searchsorted(hashes, q, side="left")
    counts = np.searchsorted(hashes, q, side="right") - lo
    counts[counts > max_postings] = 0
    total = int(counts.sum())
    if total == 0:
        return _empty_hits()
    query_pos = np.repeat(np.arange(q.size, dtype=np.int64), counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    rows = starts + np.arange(total)
    return Hits(query_pos, tracks[rows].astype(np.int32), times[rows].astype(np.int32))


class SqlIndex:
    """The engine's ``Index`` over a database connection (PostgreSQL or SQLite).

    Works inside the caller's transaction: pass a ``Session`` (its connection is
    used) or a plain SQLAlchemy ``Connection``; nothing here commits. ``add``
    replaces a track's rows; ``bulk_add`` only appends (for filling an index with
    tracks known to be new, e.g. a benchmark's synthetic filler).
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

    # -- writing --

    def add(self, track_id: int, fp: Fingerprint) -> None:
        """Store ``fp``'s rows under ``track_id``, replacing any previous ones."""
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

    def bulk_add(self, tracks: Iterable[tuple[int, U32, I32]]) -> int:
        """Append the rows of many tracks at once; returns the number of rows written.

        Nothing is replaced and no hash list is kept: meant for ids that are not
        registered in ``fingerprint_tracks`` (benchmark filler), or for ``add``.
        """
        written = 0
        batch: list[tuple[int, U32, I32]] = []
        size = 0
        for track in tracks:
            batch.append(track)
            size += int(np.size(track[1]))
            if size >= 500_000:
                written += self._write(batch)
                batch, size = [], 0
        if batch:
            written += self._write(batch)
        return written

    def _write(self, batch: list[tuple[int, U32, I32]]) -> int:
        hashes = np.concatenate([_as_signed(h) for _, h, _ in batch])
        times = np.concatenate([np.asarray(t, dtype=np.int32) for _, _, t in batch])
        tracks = np.repeat(np.asarray([i for i, _, _ in batch], dtype=np.int32),
                           [int(np.size(h)) for _, h, _ in batch])
        if hashes.size == 0:
            return 0
        if self.is_postgresql:
            self._copy(hashes, tracks, times)
        else:
            rows = list(zip(hashes.tolist(), tracks.tolist(), times.tolist(), strict=True))
            self._conn.exec_driver_sql(_INSERT_SQL, rows)
        return int(hashes.size)

    def _copy(self, hashes: I32, tracks: I32, times: I32) -> None:
        """One binary ``COPY``: the tuples are laid out by numpy, not row by row in Python."""
        rows = np.empty(hashes.size, dtype=_PG_ROW)
        rows["n"] = 3
        rows["l_hash"] = rows["l_track"] = rows["l_t"] = 4
        rows["hash"], rows["track"], rows["t"] = hashes, tracks, times
        payload = memoryview(_PG_SIGNATURE + rows.tobytes() + _PG_TRAILER)
        raw: Any = self._conn.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
            for start in range(0, len(payload), COPY_BLOCK):
                copy.write(payload[start:start + COPY_BLOCK])

    def remove(self, track_id: int) -> None:
        """Forget every row of ``track_id`` (no error if it has none).

        A registered track's rows are found through the ``hash`` index from its
        hash list (a registered track without one was never indexed: nothing to
        do). Rows of an id that is not registered at all (``bulk_add`` filler)
        can only be found by scanning the table.
        """
        row = self._conn.execute(select(FingerprintTrack.id, FingerprintTrack.hash_list)
                                 .where(FingerprintTrack.id == track_id)).first()
        if row is None:
            table = fingerprint_hashes
            self._conn.execute(delete(table).where(table.c.track_id == track_id))
            return
        if row.hash_list is None:
            return
        signed = _as_signed(decode_hash_list(row.hash_list)).tolist()
        if self.is_postgresql:
            self._conn.exec_driver_sql(
                f"DELETE FROM {_TABLE} WHERE track_id = %(track)s "  # noqa: S608
                "AND hash = ANY(CAST(%(hashes)b AS integer[]))",
                {"track": track_id, "hashes": signed})
            return
        for start in range(0, len(signed), SQLITE_CHUNK):
            part = signed[start:start + SQLITE_CHUNK]
            marks = ",".join("?" * len(part))
            self._conn.exec_driver_sql(
                f"DELETE FROM {_TABLE} WHERE track_id = ? AND hash IN ({marks})",  # noqa: S608
                (track_id, *part))

    # -- reading --

    def lookup(self, hashes: U32) -> Hits:
        """Every stored row whose hash is in ``hashes`` (too-common hashes left out)."""
        query = np.asarray(hashes, dtype=np.uint32)
        if query.size == 0:
            return _empty_hits()
        distinct = _as_signed(np.unique(query)).tolist()
        found = self._fetch_pg(distinct) if self.is_postgresql else self._fetch_sqlite(distinct)
        if found.size == 0:
            return _empty_hits()
        return hits_for(query, found[:, 0].astype(np.int32).view(np.uint32),
                        found[:, 1].astype(np.int32), found[:, 2].astype(np.int32),
                        self.max_postings)

    def _fetch_pg(self, distinct: list[int]) -> npt.NDArray[np.int64]:
        """Rows of ``distinct``, never more than ``max_postings + 1`` for one hash.

        A common hash would otherwise bring back thousands of rows only for
        ``hits_for`` to drop them; and rows arrive as binary COPY, parsed by numpy,
        not as one Python tuple each.
        """
        raw: Any = self._conn.connection.driver_connection
        data = bytearray()
        params = {"hashes": distinct, "cap": self.max_postings + 1}
        with raw.cursor() as cursor, cursor.copy(_PG_LOOKUP_COPY, params) as copy:
            for block in copy:
                data += block
        body = len(data) - len(_PG_SIGNATURE) - len(_PG_TRAILER)
        rows = np.frombuffer(data, dtype=_PG_ROW, count=max(body, 0) // _PG_ROW.itemsize,
                             offset=len(_PG_SIGNATURE))
        return np.stack([rows["hash"], rows["track"], rows["t"]], axis=1).astype(np.int64)

    def _fetch_sqlite(self, distinct: list[int]) -> npt.NDArray[np.int64]:
        """As ``_fetch_pg``: at most ``max_postings + 1`` rows per hash, in chunks."""
        rows: list[Any] = []
        for start in range(0, len(distinct), SQLITE_CHUNK):
            part = distinct[start:start + SQLITE_CHUNK]
            values = ",".join(["(?)"] * len(part))
            rows += self._conn.exec_driver_sql(
                f"WITH q(h) AS (VALUES {values}) "  # noqa: S608
                f"SELECT f.hash, f.track_id, f.t FROM q JOIN {_TABLE} f ON f.rowid IN "
                f"(SELECT rowid FROM {_TABLE} WHERE hash = q.h LIMIT ?)",
                (*part, self.max_postings + 1)).all()
        return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


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
        conn.exec_driver_sql(f"ANALYZE {_TABLE}")


# --- Measuring (tests, benchmark) ----------------------------------------------------------------


def index_size_bytes(conn: Connection) -> int:
    """Bytes the index occupies on disk: hash rows, their index and the track table.

    PostgreSQL: ``pg_total_relation_size`` (heap, indexes, TOAST). SQLite: the
    pages of those tables and their indexes, from the ``dbstat`` virtual table.
    """
    tables = (fingerprint_hashes.name, FingerprintTrack.__tablename__)
    if conn.dialect.name == "postgresql":
        total = conn.exec_driver_sql(
            "SELECT pg_total_relation_size(%(a)s) + pg_total_relation_size(%(b)s)",
            {"a": tables[0], "b": tables[1]}).scalar()
    else:
        total = conn.exec_driver_sql(
            "SELECT SUM(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name "
            "WHERE m.tbl_name IN (?, ?)", tables).scalar()
    return int(total or 0)


def synthetic_tracks(n_tracks: int, *, rows_per_track: int = 2500, first_id: int = 1,
                     hash_bits: int = 26, seed: int = 0,
                     frames: int = 7800) -> Iterator[tuple[int, U32, I32]]:
    """Filler tracks of uniformly random hashes for sizing an index (not for matching).

    2,500 rows is about three minutes of audio at the engine's reference density;
    7,800 frames is three minutes of anchor times.
    """
    rng = np.random.default_rng(seed)
    for track_id in range(first_id, first_id + n_tracks):
        hashes = rng.integers(0, 1 << hash_bits, rows_per_track, dtype=np.uint32)
        times = np.sort(rng.integers(0, frames, rows_per_track, dtype=np.int32))
        yield track_id, hashes, times


def fill_synthetic(conn: Connection, n_tracks: int, *, rows_per_track: int = 2500,
                   first_id: int = 1_000_000, seed: int = 0,
                   rebuild_index: bool = True) -> int:
    """Append ``n_tracks`` filler tracks to the index on ``conn``; returns the rows written.

    For benchmarks on a scratch database migrated to head: the filler ids start far
    above real ones and are not registered in ``fingerprint_tracks``, so ``identify``
    ignores them while ``match`` still has to wade through their rows. On PostgreSQL,
    ``rebuild_index`` drops the ``hash`` index for the load and builds it again after
    (several times faster than maintaining it row by row, and a tighter b-tree), then
    runs ``ANALYZE``. The caller commits.
    """
    tracks = synthetic_tracks(n_tracks, rows_per_track=rows_per_track, first_id=first_id,
                              seed=seed)
    if conn.dialect.name == "postgresql" and rebuild_index:
        with bulk_load(conn) as index:
            return index.bulk_add(tracks)
    written = SqlIndex(conn).bulk_add(tracks)
    conn.exec_driver_sql(f"ANALYZE {_TABLE}")
    return written


@contextmanager
def bulk_load(conn: Connection) -> Iterator[SqlIndex]:
    """Append many rows with the ``hash`` b-tree dropped, then build it again in one go.

    Several times faster than growing the b-tree row by row with random keys, and a
    tighter b-tree; then ``ANALYZE``. The rebuilt index is the model's own definition.
    The caller commits; on PostgreSQL a ``VACUUM`` afterwards (``vacuum_index``) lets
    lookups skip the heap at once instead of when autovacuum comes by.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '1GB'")
    _HASH_INDEX.drop(conn)
    yield SqlIndex(conn)
    _HASH_INDEX.create(conn)
    conn.exec_driver_sql(f"ANALYZE {_TABLE}")


def vacuum_index(engine: Engine) -> None:
    """``VACUUM`` the hash rows (PostgreSQL): marks pages all-visible for index-only scans."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM {_TABLE}")


def lookup_latencies(conn: Connection, queries: Sequence[Fingerprint]) -> list[float]:
    """Seconds taken by ``match`` for each query against the index on ``conn``."""
    index = SqlIndex(conn)
    seconds: list[float] = []
    for query in queries:
        start = time.perf_counter()
        match(query, index)
        seconds.append(time.perf_counter() - start)
    return seconds
