"""A sound travels from upload to the library through a real worker process.

Production column: PostgreSQL, Redis and S3 (moto's server, reached over HTTP by the
worker subprocess). Embedded column: SQLite, Celery's filesystem transport and a
local object directory. The api runs in the test process with its real dispatcher.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import select

from api import create_app
from soundkit import webhooks
from soundkit.db import Database
from soundkit.models import Sound, WebhookDelivery
from soundkit.settings import Settings, load_settings
from soundkit.storage import S3Store
from tests.audio import make_audio
from tests.conftest import SECRET, World, build_world
from tests.integration.stack import wait_final, wait_for, worker

pytestmark = pytest.mark.integration


class Receiver:
    """A webhook endpoint on loopback that records what it is sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture(scope="module")
def track(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_audio(tmp_path_factory.mktemp("e2e") / "e2e track.mp3", 8.0)


def production_env(var_dir: Path, pg_db_url: str, redis_url: str, s3_endpoint: str,
                   aws_env: dict[str, str]) -> dict[str, str]:
    bucket = f"soundkit-{uuid.uuid4().hex[:8]}"
    env = {"SOUNDKIT_VAR_DIR": str(var_dir), "SOUNDKIT_SECRET_KEY": SECRET,
           "DATABASE_URL": pg_db_url, "BROKER_URL": redis_url,
           "STORAGE_URL": f"s3://{bucket}", "S3_ENDPOINT_URL": s3_endpoint,
           "SOUNDKIT_RECONCILE_INTERVAL_S": "1", **aws_env}
    S3Store(bucket, endpoint_url=s3_endpoint).ensure_bucket()
    return env


def embedded_env(var_dir: Path) -> dict[str, str]:
    return {"SOUNDKIT_VAR_DIR": str(var_dir), "SOUNDKIT_SECRET_KEY": SECRET}


def push(app: Flask, token: str, path: Path) -> str:
    response = app.test_client().post(
        "/v2/sound/upload/", headers={"Authorization": f"Bearer {token}"},
        data={"sound_file": (io.BytesIO(path.read_bytes()), path.name), "title": "E2E"},
        content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    upload_id: str = response.get_json()["data"]["upload_id"]
    return upload_id


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format",
                          "-of", "json", str(path)], capture_output=True, text=True,
                         check=True)
    found: dict[str, Any] = json.loads(out.stdout)
    return found


def delivery_status(db: Database) -> str | None:
    with db.session() as session:
        found: str | None = session.scalars(select(WebhookDelivery.status)).one_or_none()
        return found


def run_journey(env: dict[str, str], tmp_path: Path, track: Path, receiver: Receiver,
                served_by_api: bool) -> None:
    settings: Settings = load_settings(env)
    from soundkit import migrate

    migrate.upgrade(settings.database_url)
    db = Database(settings.database_url)
    world: World = build_world(db, settings, webhook_url=receiver.url)
    app = create_app(settings)
    token = world.token()
    with worker(env, tmp_path / "worker.log", beat=True) as proc:
        upload_id = push(app, token, track)
        status = wait_final(app.test_client(), token, upload_id, proc=proc)
        assert status["status"] == "IN_LIBRARY", (status, proc.output()[-3000:])
        assert status["sound_id"]
        wait_for(lambda: receiver.requests, 30, "the sound.upload.complete webhook")
        # The receiver answers before the worker records the delivery: wait for the record.
        wait_for(lambda: delivery_status(db) == "delivered", 30, "the delivery's record")

    listing = app.test_client().get("/v2/sound/list/",
                                    headers={"Authorization": f"Bearer {token}"})
    sound = listing.get_json()["data"]["sounds"][0]
    assert sound["sound_id"] == status["sound_id"]
    url, playback = sound["playback_url"], tmp_path / "playback.m4a"
    if served_by_api:  # the local store's signed URL is served by the api itself
        playback.write_bytes(app.test_client().get(url.removeprefix(settings.public_url)).data)
    else:
        playback.write_bytes(requests.get(url, timeout=30).content)
    probe = ffprobe(playback)
    stream = probe["streams"][0]
    assert stream["codec_name"] == "aac" and stream["profile"] == "LC"
    assert stream["sample_rate"] == "44100" and stream["channels"] == 2
    assert abs(float(probe["format"]["duration"]) - 8.0) < 0.15
    assert "title" not in probe["format"].get("tags", {})

    headers, body = receiver.requests[0]
    assert webhooks.verify(world.webhook_secret, body, headers["Soundkit-Signature"])
    event = json.loads(body)
    assert event["event"] == "sound.upload.complete"
    assert json.loads(event["content"])["sound_id"] == status["sound_id"]
    with db.session() as session:
        assert len(session.scalars(select(Sound)).all()) == 1
        assert session.scalars(select(WebhookDelivery)).one().status == "delivered"
    db.dispose()


def test_production_stack_postgres_redis_s3(tmp_path: Path, pg_db_url: str, redis_url: str,
                                            s3_endpoint: str, aws_env: dict[str, str],
                                            track: Path, receiver: Receiver) -> None:
    env = production_env(tmp_path / "var", pg_db_url, redis_url, s3_endpoint, aws_env)
    run_journey(env, tmp_path, track, receiver, served_by_api=False)


def test_embedded_defaults_sqlite_filesystem_broker_local_store(
        tmp_path: Path, track: Path, receiver: Receiver) -> None:
    run_journey(embedded_env(tmp_path / "var"), tmp_path, track, receiver, served_by_api=True)
