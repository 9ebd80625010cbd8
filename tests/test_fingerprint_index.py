"""The fingerprint index in the database, on SQLite and PostgreSQL.

``SqlIndex`` must answer exactly as the engine's in-memory index does (same rows,
same positions, same too-common-hash cut), find real clips through ``match``, and
forget a track completely when a catalog track or a sound is deleted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy import event, select

from pipelines.fingerprint import SCORE_THRESHOLD, Fingerprint, InMemoryIndex, extract, match
from soundkit import fingerprints as fpx
from soundkit import migrate, postings
from soundkit.db import Database, scratch_postgres_database
from soundkit.library import delete_sound
from soundkit.models import App, FingerprintKind, FingerprintTrack, Sound
from soundkit.settings import Settings, load_settings
from soundkit.storage import open_store
from tests.conftest import PG_ADMIN_URL, SECRET, World, build_world, require_port
from tests.music import SR, melody

U32 = np.uint32


@pytest.fixture(params=["sqlite", "postgresql"])
def index_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A migrated database of each kind (PostgreSQL is emptied after the test)."""
    url = (request.getfixturevalue("settings").database_url if request.param == "sqlite"
           else request.getfixturevalue("pg_db_url"))
    database = Database(url)
    yield database
    database.dispose()


def random_track(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows over the whole uint32 range (the top bit set half the time) and a small pool,
    so that some hashes repeat within and across tracks."""
    pool = rng.integers(0, 2**32, 300, dtype=np.uint64).astype(U32)
    hashes = np.where(rng.random(rows) < 0.5, rng.choice(pool, rows),
                      rng.integers(0, 2**32, rows, dtype=np.uint64).astype(U32)).astype(U32)
    times = rng.integers(0, 5000, rows).astype(np.int32)
    return hashes, times


def triples(hits: object) -> list[tuple[int, int, int]]:
    return sorted(zip(hits.query_pos.tolist(), hits.track_ids.tolist(),  # type: ignore[attr-defined]
                      hits.times.tolist(), strict=True))  # type: ignore[attr-defined]


def row_count(db: Database, track_id: int | None = None) -> int:
    with db.engine.connect() as conn:
        return fpx.SqlIndex(conn).posting_count(track_id)


def test_lookup_answers_like_the_in_memory_index(index_db: Database) -> None:
    rng = np.random.default_rng(7)
    memory = InMemoryIndex(max_postings=5)
    tracks = {track_id: random_track(rng, 400) for track_id in range(1, 9)}
    with index_db.engine.begin() as conn:
        index = fpx.SqlIndex(conn, max_postings=5)
        assert index.bulk_add((i, h, t) for i, (h, t) in tracks.items()) == 8 * 400
    for track_id, (hashes, times) in tracks.items():
        memory.add_arrays(track_id, hashes, times)
    # Stored hashes (some asked twice), common ones (cut above 5 rows) and strangers.
    query = np.concatenate([tracks[3][0][:150], tracks[3][0][:20], tracks[6][0][-50:],
                            rng.integers(0, 2**32, 100, dtype=np.uint64).astype(U32)])
    with index_db.engine.connect() as conn:
        found = fpx.SqlIndex(conn, max_postings=5).lookup(query)
    expected = memory.lookup(query)
    assert len(expected) > 150
    assert triples(found) == triples(expected)
    assert found.track_ids.dtype == np.int32 and found.times.dtype == np.int32
    assert int(found.query_pos.max()) < query.size


def test_too_common_hashes_are_left_out(index_db: Database) -> None:
    common, rare = U32(0xFFFF_FFF0), U32(12345)
    with index_db.engine.begin() as conn:
        index = fpx.SqlIndex(conn, max_postings=3)
        for track_id in range(1, 5):  # 4 rows of ``common``, 3 of ``rare``
            hashes = np.array([common, rare if track_id < 4 else U32(1)], dtype=U32)
            index.add_arrays(track_id, hashes, np.array([10, 20], dtype=np.int32))
        hits = index.lookup(np.array([common, rare], dtype=U32))
    assert sorted(hits.track_ids.tolist()) == [1, 2, 3]
    assert set(hits.query_pos.tolist()) == {1}


def test_add_replaces_and_remove_forgets_one_track(index_db: Database) -> None:
    rng = np.random.default_rng(3)
    with index_db.session() as session:
        registered = FingerprintTrack(kind=FingerprintKind.CATALOG)
        session.add(registered)
        session.flush()
        index = fpx.SqlIndex(session)
        first, times = random_track(rng, 300)
        index.add_arrays(registered.id, first, times)
        second, times2 = random_track(rng, 200)
        index.add_arrays(registered.id, second, times2)  # replaces the first rows
        index.bulk_add([(9999, first, times)])  # an unregistered neighbour sharing hashes
        track_id = registered.id
    assert row_count(index_db, track_id) == 200
    with index_db.session() as session:
        stored = session.get(FingerprintTrack, track_id)
        assert stored is not None and stored.hash_list is not None
        assert stored.hash_count == 200
        assert np.array_equal(fpx.decode_hash_list(stored.hash_list), np.unique(second))
        fpx.SqlIndex(session).remove(track_id)  # through the hash index
    assert row_count(index_db, track_id) == 0
    assert row_count(index_db, 9999) == 300
    with index_db.session() as session:
        fpx.SqlIndex(session).remove(9999)  # no hash list: a scan, same result
        fpx.SqlIndex(session).remove(424242)  # nothing there: no error
    assert row_count(index_db) == 0


def test_a_clip_is_found_through_the_database(index_db: Database) -> None:
    tracks = {seed: melody(seed, 30.0) for seed in (21, 22, 23)}
    with index_db.session() as session:
        ids = {}
        for seed, pcm in tracks.items():
            track = FingerprintTrack(kind=FingerprintKind.CATALOG)
            session.add(track)
            session.flush()
            fpx.SqlIndex(session).add(track.id, extract(pcm, SR))
            ids[seed] = track.id
    with index_db.engine.connect() as conn:
        index = fpx.SqlIndex(conn)
        clip = tracks[22][int(12.5 * SR):int(20.5 * SR)]
        found = match(extract(clip, SR, query=True), index)
        assert [m.track_id for m in found] == [ids[22]]
        assert found[0].score >= SCORE_THRESHOLD
        assert found[0].offset_s == pytest.approx(12.5, abs=0.05)
        stranger = melody(99, 10.0)
        assert match(extract(stranger, SR, query=True), index) == []


def test_catalog_tracks_and_deleted_sounds_take_their_hashes_away(
        index_db: Database, tmp_path: Path) -> None:
    fp = extract(melody(31, 20.0), SR)
    with index_db.session() as session:
        track = fpx.add_catalog_track(session, title="Song", rights_holder="Label",
                                      sha256="a" * 64, fp=fp, duration_s=20.0)
        catalog_id = track.id
    with index_db.session() as session:
        [entry] = fpx.list_catalog(session)
        assert (entry.track.title, entry.hash_count) == ("Song", len(fp))
    assert row_count(index_db) == len(fp)
    with index_db.session() as session:
        assert fpx.remove_catalog_track(session, catalog_id) is not None
        assert fpx.remove_catalog_track(session, catalog_id + 1000) is None
    assert row_count(index_db) == 0

    world = build_world(index_db, _settings_for(index_db, tmp_path))
    sound_id = _sound(index_db, world)
    with index_db.session() as session:
        fpx.index_sound(session, sound_id, fp)
    assert row_count(index_db) == len(fp)
    store = open_store(world.settings)
    with index_db.session() as session:
        assert delete_sound(session, store, sound_id) is not None  # the library's one way
    assert row_count(index_db) == 0
    with index_db.session() as session:
        assert session.scalars(select(FingerprintTrack)).all() == []


def test_a_sound_removed_behind_the_librarys_back_is_never_reported(
        index_db: Database, tmp_path: Path) -> None:
    world = build_world(index_db, _settings_for(index_db, tmp_path))
    pcm = melody(41, 20.0)
    sound_id = _sound(index_db, world)
    with index_db.session() as session:
        fpx.index_sound(session, sound_id, extract(pcm, SR))
    query = extract(pcm[5 * SR:15 * SR], SR, query=True)
    with index_db.session() as session:
        [found] = fpx.identify(session, query)
        assert (found.kind, found.id, found.owner_id) == ("sound", sound_id, world.creator.id)
        assert fpx.identify(session, query, exclude_sound_id=sound_id) == []
        session.delete(session.get(Sound, sound_id))  # e.g. a cascade from elsewhere
    with index_db.session() as session:
        assert fpx.identify(session, query) == []
        orphan = session.scalars(select(FingerprintTrack)).one()
        assert orphan.sound_id is None  # kept, with its hash list, so it can be cleaned


def test_hash_list_is_small_and_exact() -> None:
    hashes = extract(melody(51, 60.0), SR).hashes
    blob = fpx.encode_hash_list(hashes)
    assert np.array_equal(fpx.decode_hash_list(blob), np.unique(hashes))
    assert len(blob) < 3.5 * np.unique(hashes).size  # well under the 12 bytes of a row


def test_bytes_per_minute_are_measured(index_db: Database) -> None:
    minutes = 3.0
    fp = extract(melody(61, 60.0 * minutes), SR)
    with index_db.engine.connect() as conn:
        empty = fpx.index_size_bytes(conn)
    with index_db.session() as session:
        for seed in range(8):  # 8 tracks of 3 minutes: 24 minutes of audio
            track = FingerprintTrack(kind=FingerprintKind.CATALOG)
            session.add(track)
            session.flush()
            fpx.SqlIndex(session).add(track.id, fp if seed == 0 else Fingerprint(
                fp.hashes ^ U32(seed * 2654435761 % 2**32), fp.times, fp.duration_s))
    with index_db.engine.connect() as conn:
        grown = fpx.index_size_bytes(conn) - empty
    per_minute = grown / (8 * minutes)
    print(f"{index_db.engine.dialect.name}: {len(fp) / minutes:.0f} rows and "
          f"{per_minute / 1000:.1f} kB per minute of audio")
    assert 12 * len(fp) / minutes < per_minute  # at least the rows' own bytes


def _settings_for(db: Database, tmp_path: Path) -> Settings:
    return load_settings({"SOUNDKIT_VAR_DIR": str(tmp_path / "var"), "DATABASE_URL": db.url,
                          "SOUNDKIT_SECRET_KEY": SECRET})


def _sound(db: Database, world: World) -> str:
    with db.session() as session:
        app_id = session.scalar(select(App.id).where(App.client_key == world.client_key))
        assert app_id is not None
        sound = Sound(id="snd_" + "1" * 24, owner_id=world.creator.id, app_id=app_id,
                      upload_id="upl_" + "1" * 24, title="Mine", duration_ms=20000,
                      sample_rate=44100, channels=2, source_codec="flac", original_key="a",
                      playback_key="b", preview_key="c", waveform_key="d", sha256="e" * 64)
        session.add(sound)
        return sound.id


def test_benchmark_filler_and_latency_helpers(index_db: Database) -> None:
    pcm = melody(81, 20.0)
    assert fpx.fill_synthetic(index_db.engine, 60, rows_per_track=500) == 60 * 500
    with index_db.engine.begin() as conn:
        fpx.SqlIndex(conn).add(7, extract(pcm, SR))
    assert row_count(index_db) >= 60 * 500
    with index_db.engine.connect() as conn:
        layout = fpx.SqlIndex(conn).layout()
        assert layout.shift == postings.shift_for(60 * 500)  # fitted before the load
        assert layout.postings == row_count(index_db)
        query = extract(pcm[4 * SR:12 * SR], SR, query=True)
        assert [m.track_id for m in match(query, fpx.SqlIndex(conn))] == [7]
        seconds = fpx.lookup_latencies(conn, [query, query])
    assert len(seconds) == 2 and all(s > 0 for s in seconds)


def test_indexing_and_forgetting_a_track_never_scans_the_blocks(index_db: Database) -> None:
    """A track's blocks are found from its hash list: reading every block would be a scan."""
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "fingerprint_blocks" in statement:
            statements.append(" ".join(statement.split()))

    event.listen(index_db.engine, "before_cursor_execute", record)
    try:
        fp = extract(melody(91, 12.0), SR)
        with index_db.session() as session:
            track = fpx.add_catalog_track(session, title="T", rights_holder="R",
                                          sha256="f" * 64, fp=fp, duration_s=12.0)
        assert statements and all(s.startswith("INSERT") for s in statements)  # appends only
        statements.clear()
        with index_db.session() as session:
            fpx.remove_catalog_track(session, track.id)
    finally:
        event.remove(index_db.engine, "before_cursor_execute", record)
    reads = [s for s in statements if s.startswith("SELECT")]
    assert reads and all(("ANY(" in s or " IN (" in s) and "key >" not in s
                         for s in reads), statements
    assert row_count(index_db) == 0


def _all_triples(db: Database, query: np.ndarray) -> list[tuple[int, int, int]]:
    with db.engine.connect() as conn:
        return triples(fpx.SqlIndex(conn, max_postings=10_000).lookup(query))


def test_the_layout_follows_the_index_size_and_lookups_never_notice(index_db: Database) -> None:
    """Grown past its layout, the index splits its buckets; shrunk, it merges them.

    Lookups answer the same before, during (two layouts at once) and after a rebuild,
    and postings written while a rebuild is under way are not lost.
    """
    rng = np.random.default_rng(11)
    tracks = {i: random_track(rng, 3000) for i in range(1, 7)}
    memory = InMemoryIndex(max_postings=10_000)
    for i, (h, t) in tracks.items():
        memory.add_arrays(i, h, t)
    query = np.concatenate([tracks[2][0][:400], tracks[5][0][-300:]])
    expected = triples(memory.lookup(query))
    with index_db.engine.begin() as conn:
        fpx.SqlIndex(conn).bulk_add((i, h, t) for i, (h, t) in tracks.items() if i < 6)
    with index_db.engine.connect() as conn:
        before = fpx.SqlIndex(conn).layout()
    assert before.shift == postings.MAX_SHIFT and before.postings == 5 * 3000
    # Half a rebuild: the layout is switched and one batch of blocks has moved.
    target = postings.shift_for(6 * 3000)
    assert target < before.shift
    with index_db.engine.begin() as conn:
        conn.execute(sa.update(fpx.FingerprintLayout).values(shift=target,
                                                             previous_shift=before.shift))
        fpx.SqlIndex(conn).bulk_add([(6, *tracks[6])])  # written in the new layout
    assert _all_triples(index_db, query) == expected
    assert fpx.repack_index(index_db.engine, batch=7) is True  # carries on, 7 blocks a batch
    with index_db.engine.connect() as conn:
        after = fpx.SqlIndex(conn).layout()
        shifts = {postings.key_shift(k) for k in conn.execute(
            sa.select(fpx.fingerprint_blocks.c.key)).scalars()}
    assert (after.shift, after.previous_shift, after.postings) == (target, None, 6 * 3000)
    assert shifts == {target}
    assert _all_triples(index_db, query) == expected
    assert fpx.repack_index(index_db.engine) is False  # fits: nothing to do
    assert row_count(index_db) == 6 * 3000
    # Forget most of it: the buckets widen again.
    with index_db.engine.begin() as conn:
        for i in range(1, 6):
            fpx.SqlIndex(conn).remove(i)
    assert fpx.repack_index(index_db.engine) is True
    with index_db.engine.connect() as conn:
        assert fpx.SqlIndex(conn).layout().shift == postings.shift_for(3000) > target
    memory = InMemoryIndex(max_postings=10_000)
    memory.add_arrays(6, *tracks[6])
    probe = tracks[6][0][:500]
    assert _all_triples(index_db, probe) == triples(memory.lookup(probe))


def test_a_damaged_block_is_reported_not_misread(index_db: Database) -> None:
    with index_db.engine.begin() as conn:
        conn.execute(sa.insert(fpx.fingerprint_blocks).values(
            key=int(postings.keys_for([5], postings.MAX_SHIFT)[0]), postings=b"\x00" * 13))
    with index_db.engine.connect() as conn, pytest.raises(ValueError, match="damaged"):
        fpx.SqlIndex(conn).lookup(np.array([5], dtype=U32))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_rows_of_the_earlier_layout_are_carried_over(backend: str, tmp_path: Path) -> None:
    """``upgrade`` from one row per posting packs them under scrambled bucket keys;
    ``downgrade`` goes back through plain bucket keys to one row per posting."""
    if backend == "sqlite":
        _carry_over(f"sqlite:///{tmp_path / 'old.db'}")
        return
    require_port("127.0.0.1", 5432, "PostgreSQL")
    with scratch_postgres_database(PG_ADMIN_URL, "soundkit_migrate") as url:
        _carry_over(url)


def _carry_over(url: str) -> None:
    rng = np.random.default_rng(5)
    hashes = rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(U32)
    tracks = rng.integers(1, 40, 2000).astype(np.int32)
    times = rng.integers(0, 9000, 2000).astype(np.int32)
    migrate.upgrade(url, "0004")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO fingerprint_hashes (hash, track_id, t) "
                                 "VALUES (:h, :i, :t)"),
                         [{"h": h, "i": i, "t": t} for h, i, t in zip(
                             hashes.view(np.int32).tolist(), tracks.tolist(), times.tolist(),
                             strict=True)])
        migrate.upgrade(url)
        memory = InMemoryIndex(max_postings=10_000)
        for i in np.unique(tracks).tolist():
            memory.add_arrays(i, hashes[tracks == i], times[tracks == i])
        with engine.connect() as conn:
            index = fpx.SqlIndex(conn, max_postings=10_000)
            assert index.layout().postings == 2000
            assert triples(index.lookup(hashes[::3])) == triples(memory.lookup(hashes[::3]))
        migrate.downgrade(url, "0005")  # buckets of consecutive hashes again
        with engine.connect() as conn:
            shift = conn.execute(sa.text("SELECT shift FROM fingerprint_layout")).scalar_one()
            blocks = conn.execute(sa.text("SELECT key, postings FROM fingerprint_blocks")).all()
        assert sum(len(blob) for _, blob in blocks) == 2000 * postings.RECORD.itemsize
        for key, blob in blocks:
            plain = {(shift << 32) | (h >> shift) for h in postings.decode(blob)["hash"].tolist()}
            assert plain == {key}
        migrate.downgrade(url, "0004")
        with engine.connect() as conn:
            back = conn.execute(sa.text("SELECT hash, track_id, t FROM fingerprint_hashes")).all()
        assert sorted(back) == sorted(zip(hashes.view(np.int32).tolist(), tracks.tolist(),
                                          times.tolist(), strict=True))
        migrate.upgrade(url)
    finally:
        engine.dispose()


def test_beat_keeps_the_layout_fitted(index_db: Database, tmp_path: Path) -> None:
    """The maintenance task that refits the layout (repack_index, tested above) is scheduled."""
    from soundkit.queue import MAINTENANCE_QUEUE, TASK_REPACK_INDEX, celery_config
    from worker.app import repack_fingerprint_index

    config = celery_config(_settings_for(index_db, tmp_path))
    [entry] = [e for e in config["beat_schedule"].values() if e["task"] == TASK_REPACK_INDEX]
    assert entry["schedule"] > 0
    assert config["task_routes"][TASK_REPACK_INDEX] == {"queue": MAINTENANCE_QUEUE}
    assert repack_fingerprint_index.name == TASK_REPACK_INDEX


def test_the_sqlite_regroup_writes_each_block_once_in_bounded_passes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 0006 on SQLite: many passes when the records outgrow PASS_BYTES."""
    import importlib.util

    path = (Path(migrate.__file__).parent / "migrations" / "versions"
            / "0006_scrambled_bucket_keys.py")
    spec = importlib.util.spec_from_file_location("rekey_0006", path)
    assert spec is not None and spec.loader is not None
    rekey = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rekey)
    monkeypatch.setattr(rekey, "PASS_BYTES", 5000)  # 2000 records of 12 bytes: 5 passes
    monkeypatch.setattr(rekey, "PAGE", 7)
    rng = np.random.default_rng(8)
    recs = postings.records(rng.integers(0, 2**28, 2000), rng.integers(1, 30, 2000),
                            rng.integers(0, 9000, 2000))
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        for name in ("fingerprint_blocks_old", "fingerprint_blocks"):
            conn.exec_driver_sql(f"CREATE TABLE {name} (key INTEGER PRIMARY KEY, postings BLOB)")
        old = [(int(k), blob) for k, blob in postings.group(recs, 12)]  # any old grouping
        conn.exec_driver_sql("INSERT INTO fingerprint_blocks_old VALUES (?, ?)", old)
        rekey._regroup_in_passes(conn, 12, rekey._scrambled)
        blocks = conn.exec_driver_sql("SELECT key, postings FROM fingerprint_blocks").all()
    engine.dispose()
    assert sorted((int(k), bytes(b)) for k, b in blocks) != [] and len(blocks) == len(
        {k for k, _ in blocks})
    for key, blob in blocks:
        assert set(postings.keys_for(postings.decode(blob)["hash"], 12).tolist()) == {key}
    back = postings.decode(b"".join(bytes(b) for _, b in blocks))
    assert sorted(map(tuple, back.tolist())) == sorted(map(tuple, recs.tolist()))
