"""The fingerprint policy: which rule wins, and what ``flag`` and ``allow`` let through.

The blocking outcomes run end to end through a real worker process in
``tests/integration/test_fingerprint_policy_e2e.py``; here the ingest job runs
in-process (real ffmpeg, SQLite and PostgreSQL) so that each action can be set per
test without starting a worker for each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from soundkit import fingerprints as fpx
from soundkit import jobs
from soundkit.db import Database
from soundkit.models import (
    App,
    FailReason,
    FingerprintKind,
    FingerprintTrack,
    Upload,
    UploadStatus,
    new_public_id,
)
from soundkit.settings import Settings
from soundkit.storage import open_store
from tests.conftest import RecordingDispatcher, World, build_world
from tests.music import melody, mp3_64k_clip, write
from worker import fingerprinting, ingest
from worker.fingerprinting import (
    COPYRIGHT,
    DUPLICATE_OTHER,
    DUPLICATE_OWN,
    Actions,
    decide,
)
from worker.runtime import Runtime

# --- deciding --------------------------------------------------------------------------------


def found(kind: str, ident: int | str, score: float, owner: int | None = None) -> fpx.Identified:
    return fpx.Identified(FingerprintKind(kind), ident, f"title {ident}", score, 3.0, 1.0, 40,
                          rights_holder="Label" if kind == "catalog" else None, owner_id=owner)


ME, SOMEONE = 1, 2


def test_copyright_is_checked_before_duplicates_whatever_the_scores() -> None:
    matches = [found("sound", "snd_own", 80.0, ME), found("catalog", 7, 12.0)]
    decision = decide(matches, ME, Actions())
    assert decision.refusal is not None
    assert decision.refusal.reason == FailReason.COPYRIGHT
    assert decision.refusal.match_detail == {
        "rule": COPYRIGHT, "catalog_track_id": 7, "title": "title 7", "rights_holder": "Label",
        "score": 12.0, "offset_s": 3.0, "speed": 1.0}
    assert decision.refusal.duplicate_of is None


def test_own_sound_names_it_and_another_creators_does_not() -> None:
    own = decide([found("sound", "snd_a", 50.0, SOMEONE), found("sound", "snd_b", 40.0, ME)],
                 ME, Actions())
    assert own.refusal is not None and own.refusal.reason == FailReason.DUPLICATE
    assert own.refusal.duplicate_of == "snd_b"  # own is checked before another creator's
    other = decide([found("sound", "snd_a", 50.0, SOMEONE)], ME, Actions())
    assert other.refusal is not None and other.refusal.reason == FailReason.DUPLICATE
    assert other.refusal.duplicate_of is None
    assert other.refusal.match_detail is not None
    assert other.refusal.match_detail["sound_id"] == "snd_a"  # for the operator only
    assert other.refusal.match_detail["rule"] == DUPLICATE_OTHER


def test_flag_and_allow_let_the_sound_in() -> None:
    matches = [found("catalog", 7, 30.0), found("sound", "snd_a", 20.0, SOMEONE)]
    decision = decide(matches, ME, Actions(copyright="flag", duplicate_other="allow"))
    assert decision.refusal is None
    assert [d["rule"] for d in decision.flagged] == [COPYRIGHT]
    flagged_then_blocked = decide(matches, ME, Actions(copyright="flag"))
    assert flagged_then_blocked.refusal is not None
    assert flagged_then_blocked.refusal.match_detail is not None
    assert flagged_then_blocked.refusal.match_detail["rule"] == DUPLICATE_OTHER
    assert decide([], ME, Actions()).refusal is None


def test_actions_come_from_the_settings(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(SOUNDKIT_POLICY_COPYRIGHT="flag",
                             SOUNDKIT_POLICY_DUPLICATE_OWN="ALLOW")
    actions = Actions.from_settings(settings)
    assert (actions.of(COPYRIGHT), actions.of(DUPLICATE_OWN), actions.of(DUPLICATE_OTHER)) == (
        "flag", "allow", "block")
    with pytest.raises(ValueError, match="SOUNDKIT_POLICY_DUPLICATE_OTHER"):
        make_settings(SOUNDKIT_POLICY_DUPLICATE_OTHER="warn")


# --- in-process ingest --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fingerprinting_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """What worker.app does at start-up, undone after the test."""
    monkeypatch.setattr(ingest, "_policy_factory", fingerprinting.policy_factory)


@pytest.fixture(params=["sqlite", "postgresql"])
def make_rt(request: pytest.FixtureRequest,
            make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Runtime]]:
    databases: list[Database] = []
    extra = {} if request.param == "sqlite" else {
        "DATABASE_URL": request.getfixturevalue("pg_db_url")}

    def build(**env: str) -> Runtime:
        settings = make_settings(**extra, **env)
        database = Database(settings.database_url)
        databases.append(database)
        return Runtime(settings=settings, db=database, store=open_store(settings),
                       dispatcher=RecordingDispatcher())

    yield build
    for database in databases:
        database.dispose()


def enqueue(rt: Runtime, world: World, path: Path, user_id: int | None = None) -> str:
    """What the api does: the bytes under incoming/ and a queued job."""
    data = path.read_bytes()
    with rt.db.session() as session:
        app_id = session.scalar(select(App.id).where(App.client_key == world.client_key))
        assert app_id is not None
        upload = Upload(id=new_public_id("upl"), app_id=app_id,
                        user_id=user_id or world.creator.id, original_filename=path.name,
                        status=UploadStatus.PROCESSING_UPLOAD)
        upload.incoming_key = f"incoming/{upload.id}"
        session.add(upload)
        session.flush()
        rt.store.put_file(upload.incoming_key, path, "application/octet-stream")
        jobs.mark_received(session, upload.id, size=len(data),
                           sha256=hashlib.sha256(data).hexdigest())
        return upload.id


def ingest_upload(rt: Runtime, world: World, path: Path) -> Upload:
    upload_id = enqueue(rt, world, path)
    assert ingest.run(rt, upload_id) == "done"
    with rt.db.session() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        return upload


def indexed_rows(rt: Runtime, sound_id: str) -> int:
    with rt.db.session() as session:
        track = session.scalar(select(FingerprintTrack)
                               .where(FingerprintTrack.sound_id == sound_id))
        if track is None:
            return 0
        return fpx.SqlIndex(session).posting_count(track.id)


def test_a_flagged_catalog_match_gets_in_with_the_match_kept(
        make_rt: Callable[..., Runtime], tmp_path: Path) -> None:
    rt = make_rt(SOUNDKIT_POLICY_COPYRIGHT="flag")
    world = build_world(rt.db, rt.settings)
    song = melody(71, 16.0)
    with rt.db.session() as session:
        catalog = fpx.add_catalog_track(session, title="Protected", rights_holder="Label",
                                        sha256="c" * 64, fp=fpx.extract(song, 22050),
                                        duration_s=24.0)
        catalog_id = catalog.id
    upload = ingest_upload(rt, world, mp3_64k_clip(song, tmp_path / "clip.mp3", 6.0))
    assert upload.status == UploadStatus.IN_LIBRARY and upload.sound_id
    assert upload.match_detail is not None and upload.match_detail["action"] == "flag"
    [flagged] = upload.match_detail["matches"]
    assert flagged["rule"] == COPYRIGHT and flagged["catalog_track_id"] == catalog_id
    assert flagged["offset_s"] == pytest.approx(6.0, abs=0.1)
    assert indexed_rows(rt, upload.sound_id) > 50  # and it is indexed like any sound


def test_an_allowed_own_duplicate_gets_in_and_both_are_indexed(
        make_rt: Callable[..., Runtime], tmp_path: Path) -> None:
    rt = make_rt(SOUNDKIT_POLICY_DUPLICATE_OWN="allow")
    world = build_world(rt.db, rt.settings)
    song = melody(72, 16.0)
    first = ingest_upload(rt, world, write(song, tmp_path / "take.flac"))
    again = ingest_upload(rt, world, mp3_64k_clip(song, tmp_path / "again.mp3", 4.0, 12.0))
    assert (first.status, again.status) == (UploadStatus.IN_LIBRARY, UploadStatus.IN_LIBRARY)
    assert again.match_detail is None and again.fail_reason is None
    assert first.sound_id and again.sound_id
    assert indexed_rows(rt, first.sound_id) > 100 and indexed_rows(rt, again.sound_id) > 50


def test_a_blocked_upload_is_not_indexed(make_rt: Callable[..., Runtime],
                                         tmp_path: Path) -> None:
    rt = make_rt()
    world = build_world(rt.db, rt.settings)
    song = melody(73, 16.0)
    first = ingest_upload(rt, world, write(song, tmp_path / "take.flac"))
    again = ingest_upload(rt, world, write(song, tmp_path / "again.wav", start_s=3.0))
    assert again.status == UploadStatus.FAILED
    assert again.fail_reason == FailReason.DUPLICATE
    assert again.duplicate_of_sound_id == first.sound_id
    with rt.db.session() as session:
        assert session.scalar(select(func.count()).select_from(FingerprintTrack)) == 1


def test_the_same_music_checked_by_two_jobs_at_once_gets_in_once(
        make_rt: Callable[..., Runtime], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second job matched before the first was indexed; at attach it must still refuse."""
    rt = make_rt()
    world = build_world(rt.db, rt.settings)
    song = melody(74, 16.0)
    first = enqueue(rt, world, write(song, tmp_path / "take.flac"))
    second = enqueue(rt, world, mp3_64k_clip(song, tmp_path / "again.mp3", 2.0, 12.0))
    real_check = fingerprinting.FingerprintingPolicy.check

    def check_while_the_other_gets_in(self: fingerprinting.FingerprintingPolicy,
                                      ctx: ingest.JobContext) -> ingest.Refusal | None:
        refusal = real_check(self, ctx)
        if ctx.upload_id == second:
            assert refusal is None  # nothing to match yet
            assert ingest.run(rt, first) == "done"  # meanwhile, on another worker
        return refusal

    monkeypatch.setattr(fingerprinting.FingerprintingPolicy, "check",
                        check_while_the_other_gets_in)
    assert ingest.run(rt, second) == "done"
    with rt.db.session() as session:
        winner, loser = session.get(Upload, first), session.get(Upload, second)
        assert winner is not None and loser is not None
        assert winner.status == UploadStatus.IN_LIBRARY and winner.sound_id
        assert (loser.status, loser.fail_reason) == (UploadStatus.FAILED, FailReason.DUPLICATE)
        assert loser.duplicate_of_sound_id == winner.sound_id
        assert loser.sound_id is None
        assert session.scalar(select(func.count()).select_from(FingerprintTrack)) == 1
    stored = rt.store.list_keys("sounds/")
    assert stored and all(winner.sound_id in key for key in stored)
