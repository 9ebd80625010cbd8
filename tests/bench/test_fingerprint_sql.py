"""The benchmark's stored-index stage, on tiny sizes: it must measure what it claims.

Latency figures are not asserted (the machine is shared); the test pins that each
size really holds that many tracks and rows, that bytes grow with them, that real
clips still match through ``SqlIndex``, and that the scratch databases are gone.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
import sqlalchemy as sa

from bench.fingerprint import sql
from pipelines.fingerprint import ENGINE_SAMPLE_RATE, Fingerprint, extract
from tests.conftest import PG_ADMIN_URL, require_port
from tests.music import melody

pytestmark = pytest.mark.integration


def filler(first_id: int, count: int) -> Iterator[
        tuple[int, npt.NDArray[np.uint32], npt.NDArray[np.int32]]]:
    rng = np.random.default_rng(first_id)
    for track_id in range(first_id, first_id + count):
        yield (track_id, rng.integers(0, 1 << 26, 300, dtype=np.uint32),
               np.sort(rng.integers(0, 5000, 300, dtype=np.int32)))


@pytest.fixture(scope="module")
def catalog() -> tuple[list[Fingerprint], list[Fingerprint]]:
    tracks = [melody(seed, 20.0, sr=ENGINE_SAMPLE_RATE) for seed in range(3)]
    sr = ENGINE_SAMPLE_RATE
    references = [extract(pcm, sr) for pcm in tracks]
    queries = [extract(pcm[5 * sr:13 * sr], sr, query=True) for pcm in tracks]
    return references, queries


def scratch_databases() -> set[str]:
    engine = sa.create_engine(PG_ADMIN_URL)
    with engine.connect() as conn:
        names = set(conn.scalars(sa.text(
            "SELECT datname FROM pg_database WHERE datname LIKE 'soundkit_bench_%'")))
    engine.dispose()
    return names


@pytest.mark.parametrize("backend", ["SQLite", "PostgreSQL"])
def test_stored_index_stage_measures_each_size(
        backend: str, catalog: tuple[list[Fingerprint], list[Fingerprint]]) -> None:
    references, queries = catalog
    if backend == "PostgreSQL":
        require_port("127.0.0.1", 5432, "PostgreSQL")
        before = scratch_databases()
    scratch = sql.scratch_postgres() if backend == "PostgreSQL" else sql.scratch_sqlite()
    with scratch as url:
        points = sql.measure(url, backend, references, filler, queries, [10, 40],
                             rows_per_minute=1250.0, log=lambda _: None)
    real_rows = sum(len(fp) for fp in references)
    assert [p.tracks for p in points] == [10, 40]
    assert [p.rows for p in points] == [real_rows + 7 * 300, real_rows + 37 * 300]
    assert 0 < points[0].bytes_on_disk < points[1].bytes_on_disk
    assert points[1].minutes == pytest.approx(
        sum(fp.duration_s for fp in references) / 60 + 37 * 300 / 1250.0)
    assert all(p.matched == 1.0 for p in points)
    assert all(0 < p.p50_ms <= p.p95_ms for p in points)
    assert "kB/min" in sql.table(points)
    if backend == "PostgreSQL":
        assert scratch_databases() == before
