"""The ingest job in-process: real ffmpeg, real SQLite, real local store, no broker."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from soundkit import jobs
from soundkit.db import Database
from soundkit.models import (
    FailReason,
    Notification,
    Sound,
    Stage,
    StageRun,
    Upload,
    UploadStatus,
    WebhookDelivery,
    new_public_id,
    utcnow,
)
from soundkit.settings import Settings
from soundkit.storage import LocalStore, StorageUnavailable, open_store
from tests.audio import make_audio
from tests.conftest import RecordingDispatcher, World, build_world
from worker import ingest
from worker.runtime import Runtime


@pytest.fixture
def rt(settings: Settings, db: Database) -> Runtime:
    return Runtime(settings=settings, db=db, store=open_store(settings),
                   dispatcher=RecordingDispatcher())


@pytest.fixture
def hooked_world(db: Database, settings: Settings) -> World:
    return build_world(db, settings, webhook_url="https://beatlab.example/hook")


def enqueue(rt: Runtime, world: World, path: Path, title: str | None = None) -> str:
    """What the api does: store the bytes under incoming/ and record a queued job."""
    data = path.read_bytes()
    with rt.db.session() as session:
        upload_id = new_public_id("upl")
        upload = Upload(id=upload_id, app_id=1, user_id=world.creator.id, title=title,
                        original_filename=path.name, incoming_key=f"incoming/{upload_id}",
                        status=UploadStatus.PROCESSING_UPLOAD)
        session.add(upload)
        session.flush()
        rt.store.put_file(upload.incoming_key, path, "application/octet-stream")
        jobs.mark_received(session, upload.id, size=len(data),
                           sha256=hashlib.sha256(data).hexdigest())
        return upload.id


def probe_json(path: Path) -> dict[str, object]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of",
                          "json", str(path)], capture_output=True, check=True, text=True)
    loaded: dict[str, object] = json.loads(out.stdout)
    return loaded


@pytest.fixture(scope="module")
def good_track(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_audio(tmp_path_factory.mktemp("ingest") / "Night Drive.flac", 7.0)


def test_a_good_track_reaches_the_library(rt: Runtime, hooked_world: World,
                                          good_track: Path) -> None:
    upload_id = enqueue(rt, hooked_world, good_track)
    assert ingest.run(rt, upload_id) == "done"
    with rt.db.session() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        assert (upload.status, upload.stage, upload.fail_reason) == (
            UploadStatus.IN_LIBRARY, Stage.DONE, None)
        assert upload.lease_owner is None and upload.attempts == 1
        sound = session.scalars(select(Sound)).one()
        assert sound.id == upload.sound_id
        assert sound.title == "Night Drive"  # from the file name when no title was sent
        assert 6900 <= sound.duration_ms <= 7100
        assert sound.owner_id == hooked_world.creator.id
        assert sound.integrated_lufs is not None and sound.integrated_lufs < 0
        assert {s.stage for s in session.scalars(select(StageRun))} >= {
            "validating", "transcoding", "storing", "attaching"}
        assert session.scalars(select(Notification)).one().kind == "sound.ready"
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert delivery.event == "sound.upload.complete"
        assert json.loads(json.loads(delivery.body)["content"]) == {
            "upload_id": upload_id, "sound_id": sound.id}
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    assert rt.dispatcher.webhooks == [delivery.id]
    assert isinstance(rt.store, LocalStore)
    playback = probe_json(rt.store.path(sound.playback_key))
    stream = playback["streams"][0]  # type: ignore[index]
    assert stream["codec_name"] == "aac"
    assert stream["sample_rate"] == "44100" and stream["channels"] == 2
    peaks = json.loads(rt.store.path(sound.waveform_key).read_text())
    assert peaks["peaks"]


def test_a_replayed_message_does_nothing(rt: Runtime, world: World, good_track: Path) -> None:
    upload_id = enqueue(rt, world, good_track)
    assert ingest.run(rt, upload_id) == "done"
    assert ingest.run(rt, upload_id) == "skipped"
    with rt.db.session() as session:
        assert len(session.scalars(select(Sound)).all()) == 1
        assert session.get(Upload, upload_id).attempts == 1  # type: ignore[union-attr]


def test_a_job_leased_by_another_worker_is_left_alone(rt: Runtime, world: World,
                                                       good_track: Path) -> None:
    upload_id = enqueue(rt, world, good_track)
    with rt.db.session() as session:
        assert jobs.claim(session, upload_id, "other:1", 600) is not None
    assert ingest.run(rt, upload_id) == "skipped"


@pytest.mark.parametrize(("maker", "reason"), [
    (lambda d: make_audio(d / "short.wav", 2.0), FailReason.DURATION),
    (lambda d: (d / "noise.mp3").write_bytes(bytes(range(256)) * 200) and d / "noise.mp3",
     FailReason.FILE_FORMAT),
])
def test_bad_media_fails_with_its_reason_and_is_not_retried(
        rt: Runtime, hooked_world: World, tmp_path: Path,
        maker: Callable[[Path], Path], reason: FailReason) -> None:
    upload_id = enqueue(rt, hooked_world, maker(tmp_path))
    assert ingest.run(rt, upload_id) == "done"
    with rt.db.session() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        assert (upload.status, upload.fail_reason) == (UploadStatus.FAILED, reason)
        assert upload.error_detail
        assert session.scalars(select(Sound)).all() == []
        assert session.scalars(select(Notification)).one().kind == "upload.failed"
        assert session.scalars(select(WebhookDelivery)).one().event == "sound.upload.failed"
    assert rt.store.list_keys("sounds/") == []


def test_access_removed_mid_job_stops_the_attach(rt: Runtime, world: World,
                                                 good_track: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    upload_id = enqueue(rt, world, good_track)
    real_store = ingest._store

    def store_then_lose(ctx: ingest.JobContext) -> None:
        real_store(ctx)
        with rt.db.session() as session:
            jobs.fail(session, upload_id, FailReason.AUTH_REMOVED, "access removed",
                      secret_key=rt.settings.secret_key)

    monkeypatch.setattr(ingest, "_store", store_then_lose)
    assert ingest.run(rt, upload_id) == "lost"
    with rt.db.session() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None and upload.fail_reason == FailReason.AUTH_REMOVED
        assert session.scalars(select(Sound)).all() == []
    assert rt.store.list_keys("sounds/") == []


def test_transient_storage_errors_release_the_lease_for_a_retry(
        rt: Runtime, world: World, good_track: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_id = enqueue(rt, world, good_track)
    calls = {"n": 0}
    real_put = rt.store.put_file

    def flaky_put(key: str, path: Path, content_type: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StorageUnavailable("S3 is down")
        real_put(key, path, content_type)

    monkeypatch.setattr(rt.store, "put_file", flaky_put)
    with pytest.raises(ingest.TransientFailure):
        ingest.run(rt, upload_id)
    with rt.db.session() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        assert upload.status == UploadStatus.PROCESSING and upload.lease_owner is None
        assert "S3 is down" in (upload.error_detail or "")
    assert ingest.run(rt, upload_id) == "done"
    with rt.db.session() as session:
        assert session.get(Upload, upload_id).attempts == 2  # type: ignore[union-attr]


def test_a_job_that_keeps_failing_ends_internal(rt: Runtime, hooked_world: World,
                                                good_track: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    upload_id = enqueue(rt, hooked_world, good_track)

    def boom(ctx: ingest.JobContext) -> None:
        raise RuntimeError("bug in a stage")

    monkeypatch.setattr(ingest, "_transcode", boom)
    outcomes = [ingest.run(rt, upload_id) for _ in range(rt.settings.max_attempts)]
    assert outcomes == ["released"] * (rt.settings.max_attempts - 1) + ["failed"]
    with rt.db.session() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        assert (upload.status, upload.fail_reason) == (UploadStatus.FAILED, FailReason.INTERNAL)
        assert "bug in a stage" in (upload.error_detail or "")
    assert ingest.run(rt, upload_id) == "skipped"


def test_reconciler_resends_lost_wakeups_and_gives_up_on_crashed_jobs(
        rt: Runtime, world: World, good_track: Path) -> None:
    lost = enqueue(rt, world, good_track)
    crashed = enqueue(rt, world, good_track)
    now = utcnow()
    with rt.db.session() as session:
        session.execute(update(Upload).where(Upload.id == lost)
                        .values(wakeup_sent_at=now - timedelta(minutes=5)))
        # A worker that died holding the lease, on its last attempt.
        session.execute(update(Upload).where(Upload.id == crashed)
                        .values(lease_owner="dead:1", attempts=rt.settings.max_attempts,
                                lease_expires_at=now - timedelta(seconds=1)))
    with rt.db.session() as session:
        report = jobs.reconcile(session, max_attempts=rt.settings.max_attempts,
                                wakeup_grace_s=30, abandoned_upload_s=3600,
                                secret_key=rt.settings.secret_key)
    assert report.resend == [lost]
    assert report.gave_up == [crashed]
    with rt.db.session() as session:
        report = jobs.reconcile(session, max_attempts=rt.settings.max_attempts,
                                wakeup_grace_s=30, abandoned_upload_s=3600,
                                secret_key=rt.settings.secret_key)
    assert report.resend == [] and report.gave_up == []  # not again within the grace period
