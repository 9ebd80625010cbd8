"""A crash, a killed worker or a restarted broker may delay a job, never lose it or apply it twice.

Each test runs real ``celery worker`` processes (with embedded beat, so the
reconciler runs) against a redis-server of its own, which it can stop and restart,
and the session's PostgreSQL database. Leases and timeouts are shortened so
recovery takes seconds.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from api import create_app
from soundkit import migrate
from soundkit.db import Database
from soundkit.models import Sound, Upload, UploadStatus, WebhookDelivery
from soundkit.settings import load_settings
from tests.conftest import SECRET, World, build_world
from tests.integration.stack import PrivateRedis, WorkerProcess, wait_final, wait_for, worker

pytestmark = pytest.mark.integration

FAST_RECOVERY = {
    "SOUNDKIT_JOB_LEASE_S": "20",
    "SOUNDKIT_FFMPEG_TIMEOUT_S": "15",
    "SOUNDKIT_VISIBILITY_TIMEOUT_S": "30",
    "SOUNDKIT_RECONCILE_INTERVAL_S": "1",
    "SOUNDKIT_WAKEUP_GRACE_S": "2",
}


@pytest.fixture(scope="module")
def long_track(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough (90 s) that a job can be caught in the middle of its transcode."""
    path = tmp_path_factory.mktemp("long") / "long.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "anoisesrc=c=pink:r=44100:a=0.3:d=90", "-ac", "2", "-c:a", "flac",
                    str(path)], check=True, timeout=120)
    return path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class Harness:
    """The api in-process, the database, and the env a worker subprocess needs."""

    def __init__(self, tmp_path: Path, pg_db_url: str, broker_url: str) -> None:
        self.tmp_path = tmp_path
        self.env = {"SOUNDKIT_VAR_DIR": str(tmp_path / "var"), "SOUNDKIT_SECRET_KEY": SECRET,
                    "DATABASE_URL": pg_db_url, "BROKER_URL": broker_url, **FAST_RECOVERY}
        self.settings = load_settings(self.env)
        migrate.upgrade(pg_db_url)
        self.db = Database(pg_db_url)
        self.world: World = build_world(self.db, self.settings,
                                        webhook_url="http://127.0.0.1:9/unreachable")
        self.app: Flask = create_app(self.settings)
        self.token = self.world.token()
        self.workers = 0

    def push(self, path: Path) -> str:
        response = self.app.test_client().post(
            "/v2/sound/upload/", headers={"Authorization": f"Bearer {self.token}"},
            data={"sound_file": (io.BytesIO(path.read_bytes()), path.name)},
            content_type="multipart/form-data")
        assert response.status_code == 202, response.get_json()
        upload_id: str = response.get_json()["data"]["upload_id"]
        return upload_id

    def worker(self, **kwargs: object) -> WorkerProcess:
        self.workers += 1
        proc = WorkerProcess(self.env, self.tmp_path / f"worker{self.workers}.log",
                             beat=True, **kwargs)  # type: ignore[arg-type]
        proc.wait_ready()
        return proc

    def upload(self, upload_id: str) -> Upload:
        with self.db.session() as session:
            found = session.get(Upload, upload_id)
            assert found is not None
            return found

    def assert_applied_once(self, upload_id: str) -> None:
        with self.db.session() as session:
            sounds = session.scalars(select(Sound).where(Sound.upload_id == upload_id)).all()
            assert len(sounds) == 1
            deliveries = session.scalars(select(WebhookDelivery)).all()
            assert [d.event for d in deliveries] == ["sound.upload.complete"]
        assert self.upload(upload_id).status == UploadStatus.IN_LIBRARY

    def wait_final(self, upload_id: str, proc: WorkerProcess | None = None) -> str:
        status = wait_final(self.app.test_client(), self.token, upload_id, timeout=120,
                            proc=proc)
        found: str = status["status"]
        return found

    def process_to_the_end(self, upload_id: str) -> None:
        """Start a fresh worker and check the job ends in the library, applied once."""
        proc = self.worker()
        try:
            assert self.wait_final(upload_id, proc) == "IN_LIBRARY"
        finally:
            proc.stop()
        self.assert_applied_once(upload_id)

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture
def harness(tmp_path: Path, pg_db_url: str, redis_server: PrivateRedis) -> Iterator[Harness]:
    found = Harness(tmp_path, pg_db_url, redis_server.url)
    yield found
    found.close()


def wait_stage(h: Harness, upload_id: str, stage: str) -> Upload:
    def reached() -> Upload | None:
        upload = h.upload(upload_id)
        return upload if upload.stage == stage and upload.lease_owner else None

    found: Upload = wait_for(reached, 60, f"stage {stage}", interval=0.05)
    return found


def test_pool_child_killed_mid_job_is_recovered_and_applied_once(
        harness: Harness, long_track: Path) -> None:
    proc = harness.worker()
    try:
        upload_id = harness.push(long_track)
        leased = wait_stage(harness, upload_id, "transcoding")
        child_pid = int(str(leased.lease_owner).rsplit(":", 1)[1])
        assert child_pid in proc.children()
        os.kill(child_pid, signal.SIGKILL)
        assert harness.wait_final(upload_id, proc) == "IN_LIBRARY"
    finally:
        proc.stop()
    harness.assert_applied_once(upload_id)
    assert harness.upload(upload_id).attempts >= 2


def test_whole_worker_killed_mid_job_is_recovered_by_a_new_worker(
        harness: Harness, long_track: Path) -> None:
    first = harness.worker()
    upload_id = harness.push(long_track)
    wait_stage(harness, upload_id, "transcoding")
    first.kill()
    first.stop()
    with worker(harness.env, harness.tmp_path / "second.log", beat=True) as second:
        assert harness.wait_final(upload_id, second) == "IN_LIBRARY"
    harness.assert_applied_once(upload_id)


def test_redis_restarted_without_persistence_loses_no_job(
        harness: Harness, redis_server: PrivateRedis, tmp_path: Path) -> None:
    from tests.audio import make_audio

    track = make_audio(tmp_path / "queued.ogg", 6.0)
    upload_id = harness.push(track)  # queued in Redis; no worker is running
    redis_server.stop()
    redis_server.start()  # empty: the wake-up message is gone
    harness.process_to_the_end(upload_id)


def test_broker_down_during_upload_still_accepts_and_processes_later(
        harness: Harness, redis_server: PrivateRedis, tmp_path: Path) -> None:
    from tests.audio import make_audio

    track = make_audio(tmp_path / "offline.m4a", 6.0)
    redis_server.stop()
    upload_id = harness.push(track)  # 202: the job is durable in the database
    assert harness.upload(upload_id).status == UploadStatus.PROCESSING
    redis_server.start()
    harness.process_to_the_end(upload_id)
