"""The fingerprint index as the product stores it: PostgreSQL and SQLite, on disk.

The in-memory latency of ``run.py`` measures the engine; this stage measures the
index the worker really queries (``soundkit.fingerprints.SqlIndex``): a scratch
database migrated to head, the real catalog registered track by track as ingest
does, then padded with filler tracks (the corpus's hash statistics, random
times) bulk-loaded the way a large import is (the layout fitted to the size being
reached, postings appended in large batches). At each size it records

* bytes on disk (blocks, their primary key, TOAST and the track table, after a
  plain ``VACUUM``) per minute of audio, the
  filler counted at the real catalog's rows per minute, and
* lookup + match latency of real 10 s query clips, p50 and p95.

The scratch database (PostgreSQL) or file (SQLite) is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipelines.fingerprint import Fingerprint, match
from soundkit import fingerprints as fpx
from soundkit import migrate
from soundkit.db import scratch_postgres_database
from soundkit.models import FingerprintKind, FingerprintTrack

#: Where the benchmark creates its scratch PostgreSQL database (trust auth, as on CI).
PG_ADMIN_URL = os.environ.get(
    "BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
#: Filler ids start here, far above the real catalog's.
FILLER_FIRST_ID = 1_000_000

Filler = Callable[[int, int], Iterator[tuple[int, npt.NDArray[np.uint32], npt.NDArray[np.int32]]]]


@dataclass(frozen=True)
class SqlPoint:
    """One backend at one index size."""

    backend: str
    tracks: int
    rows: int
    bytes_on_disk: int
    minutes: float
    p50_ms: float
    p95_ms: float
    matched: float

    @property
    def kb_per_minute(self) -> float:
        return self.bytes_on_disk / 1000 / self.minutes


def scratch_postgres() -> contextlib.AbstractContextManager[str]:
    """A new, empty PostgreSQL database, dropped on the way out."""
    return scratch_postgres_database(PG_ADMIN_URL, "soundkit_bench")


@contextlib.contextmanager
def scratch_sqlite() -> Iterator[str]:
    """A new SQLite file in a temporary directory, removed on the way out."""
    with tempfile.TemporaryDirectory(prefix="soundkit-bench-") as folder:
        yield f"sqlite:///{Path(folder) / 'index.db'}"


def measure(url: str, backend: str, catalog: Sequence[Fingerprint], filler: Filler,
            queries: Sequence[Fingerprint], sizes: Sequence[int],
            rows_per_minute: float, log: Callable[[str], None] = print) -> list[SqlPoint]:
    """Register ``catalog``, then grow the index to each of ``sizes`` tracks and measure."""
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    points: list[SqlPoint] = []
    try:
        with engine.begin() as conn:
            empty = fpx.index_size_bytes(conn)
            _register(conn, catalog)
        real_rows = sum(len(fp) for fp in catalog)
        real_minutes = sum(fp.duration_s for fp in catalog) / 60
        rows, tracks = real_rows, len(catalog)
        fpx.repack_index(engine)  # as beat does after uploads
        for size in sorted(sizes):
            started = time.perf_counter()
            rows += _grow(engine, filler, tracks, size, real_rows / max(len(catalog), 1))
            tracks = max(size, tracks)
            fpx.vacuum_index(engine)
            with engine.connect() as conn:
                size_bytes = fpx.index_size_bytes(conn) - empty
                fpx.lookup_latencies(conn, queries[:1])  # warm the cache
                seconds = fpx.lookup_latencies(conn, queries)
                matched = _matched(conn, queries)
            ms = np.array(seconds) * 1e3
            minutes = real_minutes + (rows - real_rows) / rows_per_minute
            point = SqlPoint(backend, tracks, rows, size_bytes, minutes,
                             float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), matched)
            points.append(point)
            log(f"{backend} at {tracks} tracks: {rows / 1e6:.1f}M rows, "
                f"{point.kb_per_minute:.1f} kB/min, p95 {point.p95_ms:.1f} ms "
                f"[{time.perf_counter() - started:.0f} s]")
    finally:
        engine.dispose()
    return points


def _register(conn: Connection, catalog: Sequence[Fingerprint]) -> None:
    """The real tracks, one ``SqlIndex.add`` each, as ingest and ``catalog add`` do."""
    index = fpx.SqlIndex(conn)
    for fp in catalog:
        track_id = conn.execute(sa.insert(FingerprintTrack)
                                .values(kind=FingerprintKind.CATALOG)
                                .returning(FingerprintTrack.id)).scalar_one()
        index.add(track_id, fp)


#: Postings per batch of the filler load: each batch rewrites every block it touches
#: once, so the whole step is one batch (about 28 bytes of memory a posting).
FILLER_BATCH = 400_000_000


def _grow(engine: sa.Engine, filler: Filler, have: int, want: int,
          rows_per_track: float) -> int:
    """Bulk-load filler tracks up to ``want`` as a large import is; returns the rows written."""
    if want <= have:
        return 0
    return fpx.bulk_import(engine, filler(FILLER_FIRST_ID + have, want - have),
                           new_postings=int((want - have) * rows_per_track),
                           batch_postings=FILLER_BATCH)


def _matched(conn: Connection, queries: Sequence[Fingerprint]) -> float:
    """Share of the queries that still find a match at this size (sanity, not recall)."""
    index = fpx.SqlIndex(conn)
    return sum(bool(match(q, index)) for q in queries) / max(len(queries), 1)


def table(points: Sequence[SqlPoint]) -> str:
    """The stdout table: one line per backend and size."""
    lines = [f"{'backend':<11}{'tracks':>8}{'rows':>8}{'kB/min':>9}"
             f"{'p50 ms':>9}{'p95 ms':>9}{'matched':>9}"]
    for p in points:
        lines.append(f"{p.backend:<11}{p.tracks:>8}{p.rows / 1e6:>7.1f}M{p.kb_per_minute:>9.1f}"
                     f"{p.p50_ms:>9.1f}{p.p95_ms:>9.1f}{p.matched:>9.3f}")
    return "\n".join(lines)
