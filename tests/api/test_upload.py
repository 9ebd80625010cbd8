"""The Sound Kit upload, status and list endpoints through the Flask test client."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from soundkit.db import Database
from soundkit.models import FailReason, Sound, Upload, UploadStatus, WebhookDelivery
from soundkit.settings import Settings
from soundkit.storage import LocalStore
from tests.audio import make_audio
from tests.conftest import RecordingDispatcher, World


@pytest.fixture(scope="module")
def track(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_audio(tmp_path_factory.mktemp("audio") / "track.mp3", 6.0)


def push(client: FlaskClient, token: str, data: bytes, *, title: str | None = None,
         key: str | None = None, filename: str = "track.mp3"):  # type: ignore[no-untyped-def]
    form: dict[str, object] = {"sound_file": (io.BytesIO(data), filename)}
    if title is not None:
        form["title"] = title
    headers = {"Authorization": f"Bearer {token}"}
    if key:
        headers["Idempotency-Key"] = key
    return client.post("/v2/sound/upload/", data=form, headers=headers,
                       content_type="multipart/form-data")


def test_upload_streams_bytes_records_job_and_wakes_worker_after_commit(
        client: FlaskClient, world: World, track: Path, db: Database, store: LocalStore,
        dispatcher: RecordingDispatcher) -> None:
    data = track.read_bytes()
    response = push(client, world.token(), data, title="Night Drive")
    assert response.status_code == 202
    body = response.get_json()
    assert body["error"]["code"] == "ok"
    assert body["error"]["log_id"] == response.headers["X-Request-Id"]
    upload_id = body["data"]["upload_id"]
    assert dispatcher.uploads == [upload_id]
    with db.session() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        assert upload.status == UploadStatus.PROCESSING
        assert upload.stage == "queued"
        assert upload.title == "Night Drive"
        assert upload.size_bytes == len(data) == upload.uploaded_bytes
        assert upload.sha256 == hashlib.sha256(data).hexdigest()
        assert upload.log_id == body["error"]["log_id"]
        assert upload.original_filename == "track.mp3"
        assert upload.incoming_key == f"incoming/{upload_id}"
    assert store.path(f"incoming/{upload_id}").read_bytes() == data


def test_status_fetch_reports_the_job(client: FlaskClient, world: World, track: Path) -> None:
    token = world.token()
    upload_id = push(client, token, track.read_bytes()).get_json()["data"]["upload_id"]
    response = client.post("/v2/sound/status/fetch/", json={"upload_id": upload_id},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert data["upload_id"] == upload_id
    assert data["status"] == "PROCESSING"
    assert data["fail_reason"] is None
    assert data["uploaded_bytes"] == track.stat().st_size


def test_status_of_another_creators_upload_is_not_found(
        client: FlaskClient, world: World, track: Path) -> None:
    upload_id = push(client, world.token(), track.read_bytes()).get_json()["data"]["upload_id"]
    world.new_creator("bob")
    bob = world.token(username="bob")
    response = client.post("/v2/sound/status/fetch/", json={"upload_id": upload_id},
                           headers={"Authorization": f"Bearer {bob}"})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_idempotency_key_returns_the_same_upload(
        client: FlaskClient, world: World, track: Path, db: Database,
        dispatcher: RecordingDispatcher) -> None:
    token = world.token()
    first = push(client, token, track.read_bytes(), key="abc-1").get_json()["data"]["upload_id"]
    second = push(client, token, track.read_bytes(), key="abc-1").get_json()["data"]["upload_id"]
    third = push(client, token, track.read_bytes(), key="abc-2").get_json()["data"]["upload_id"]
    assert first == second != third
    assert dispatcher.uploads == [first, third]
    with db.session() as session:
        assert len(session.scalars(select(Upload)).all()) == 2


def test_declared_length_over_the_limit_is_refused_before_reading(
        make_settings: object, world: World, track: Path) -> None:
    from api import create_app

    settings: Settings = make_settings(SOUNDKIT_MAX_UPLOAD_BYTES="1000")  # type: ignore[operator]
    app = create_app(settings, dispatcher=RecordingDispatcher())
    response = push(app.test_client(), world.token(), track.read_bytes())
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "file_too_large"
    assert app.extensions["soundkit"].store.list_keys("incoming/") == []
    with Database(settings.database_url).session() as session:
        assert session.scalars(select(Upload)).all() == []


def test_limit_is_enforced_on_the_stream_even_without_content_length(
        make_settings: object, world: World) -> None:
    from api import create_app

    settings: Settings = make_settings(SOUNDKIT_MAX_UPLOAD_BYTES="5000")  # type: ignore[operator]
    app = create_app(settings, dispatcher=RecordingDispatcher())
    boundary = "XyZ"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"sound_file\"; "
            f"filename=\"a.wav\"\r\n\r\n").encode()
    body = head + b"\0" * 20000 + f"\r\n--{boundary}--\r\n".encode()

    response = app.test_client().post(
        "/v2/sound/upload/", input_stream=io.BytesIO(body),
        headers={"Authorization": f"Bearer {world.token()}",
                 "Content-Type": f"multipart/form-data; boundary={boundary}"},
        environ_overrides={"wsgi.input_terminated": True})  # as a chunked request arrives
    assert response.status_code == 413, response.get_json()
    body = response.get_json()
    assert body["error"]["code"] == "file_too_large"
    assert app.extensions["soundkit"].store.list_keys("incoming/") == []
    with Database(settings.database_url).session() as session:
        upload = session.get(Upload, body["data"]["upload_id"])
        assert upload is not None
        assert upload.status == UploadStatus.FAILED
        assert upload.fail_reason == FailReason.FILE_SIZE


@pytest.mark.parametrize(("form", "headers", "status", "code"), [
    ({}, {}, 400, "invalid_params"),
    ({"sound_file": (io.BytesIO(b""), "empty.mp3")}, {}, 400, "invalid_params"),
    ({"sound_file": (io.BytesIO(b"x" * 10), "a.mp3"), "title": "t" * 151}, {}, 400,
     "invalid_params"),
    ({"sound_file": (io.BytesIO(b"x" * 10), "a.mp3")}, {"Idempotency-Key": "has space"}, 400,
     "invalid_params"),
])
def test_bad_requests_are_refused_and_leave_nothing(
        client: FlaskClient, world: World, db: Database, store: LocalStore,
        form: dict[str, object], headers: dict[str, str], status: int, code: str) -> None:
    response = client.post("/v2/sound/upload/", data=form, content_type="multipart/form-data",
                           headers={"Authorization": f"Bearer {world.token()}", **headers})
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    with db.session() as session:
        assert session.scalars(select(Upload)).all() == []
    assert store.list_keys("incoming/") == []


def test_json_body_is_unsupported_media_type(client: FlaskClient, world: World) -> None:
    response = client.post("/v2/sound/upload/", json={"sound_file": "x"},
                           headers={"Authorization": f"Bearer {world.token()}"})
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"


def test_upload_without_scope_is_forbidden(client: FlaskClient, world: World,
                                           track: Path) -> None:
    response = push(client, world.token("user.info.basic,sound.list"), track.read_bytes())
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "scope_not_authorized"
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="soundkit", error="insufficient_scope", scope="sound.upload"')


def test_missing_and_bad_tokens(client: FlaskClient, track: Path) -> None:
    missing = client.post("/v2/sound/upload/")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="soundkit"'
    bad = client.get("/v2/sound/list/", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.get_json()["error"]["code"] == "access_token_invalid"
    assert 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
    query = client.get("/v2/sound/list/?access_token=nope")
    assert query.status_code == 401
    assert query.headers["WWW-Authenticate"] == 'Bearer realm="soundkit"'


def _attach_sound(db: Database, world: World, store: LocalStore, n: int) -> list[str]:
    """Sounds as the worker would leave them (the worker has its own tests)."""
    from datetime import timedelta

    from soundkit.models import utcnow

    ids = []
    with db.session() as session:
        for i in range(n):
            sid = f"snd_test{i:03d}"
            for kind in ("playback.m4a", "preview.m4a", "waveform.json"):
                store.put_file(f"sounds/{sid}/{kind}", Path(__file__), "text/plain")
            session.add(Sound(
                id=sid, owner_id=world.creator.id, app_id=1, upload_id=f"upl_test{i:03d}",
                title=f"Sound {i}", duration_ms=6000, sample_rate=44100, channels=2,
                source_codec="mp3", integrated_lufs=-14.0, true_peak_dbtp=-1.0, lra=3.0,
                original_key=f"incoming/upl_test{i:03d}",
                playback_key=f"sounds/{sid}/playback.m4a",
                preview_key=f"sounds/{sid}/preview.m4a",
                waveform_key=f"sounds/{sid}/waveform.json", sha256="0" * 64,
                created_at=utcnow() - timedelta(minutes=n - i)))
            ids.append(sid)
    return ids


def test_list_pages_newest_first_with_signed_urls_that_serve_ranges(
        client: FlaskClient, world: World, db: Database, store: LocalStore) -> None:
    ids = _attach_sound(db, world, store, 5)
    token = world.token("user.info.basic,sound.list")
    seen: list[str] = []
    cursor = ""
    while True:
        response = client.get(f"/v2/sound/list/?max_count=2&cursor={cursor}",
                              headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        data = response.get_json()["data"]
        seen += [s["sound_id"] for s in data["sounds"]]
        if not data["has_more"]:
            break
        cursor = data["cursor"]
    assert seen == list(reversed(ids))
    first = client.get("/v2/sound/list/?max_count=1",
                       headers={"Authorization": f"Bearer {token}"}).get_json()["data"]
    sound = first["sounds"][0]
    assert sound["loudness"] == {"integrated_lufs": -14.0, "true_peak_dbtp": -1.0, "lra": 3.0}
    url = sound["playback_url"].removeprefix("http://127.0.0.1:8000")
    ranged = client.get(url, headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206
    assert ranged.data == Path(__file__).read_bytes()[:10]
    tampered = client.get(url.replace("sig=", "sig=0"))
    assert tampered.status_code == 403


def test_list_rejects_bad_paging(client: FlaskClient, world: World) -> None:
    token = world.token()
    for query in ("max_count=0", "max_count=51", "max_count=x", "cursor=%%%"):
        response = client.get(f"/v2/sound/list/?{query}",
                              headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 400, query
        assert response.get_json()["error"]["code"] == "invalid_params"


def test_failure_webhook_is_written_to_the_outbox(make_settings: object) -> None:
    from api import create_app
    from tests.conftest import build_world

    settings: Settings = make_settings(SOUNDKIT_MAX_UPLOAD_BYTES="1000")  # type: ignore[operator]
    db = Database(settings.database_url)
    world = build_world(db, settings, webhook_url="https://beatlab.example/hook")
    app = create_app(settings, dispatcher=RecordingDispatcher())
    # Under the declared-length check, over the limit once streamed.
    upload_id = push(app.test_client(), world.token(), b"x" * 2000).get_json()["data"]["upload_id"]
    with db.session() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert delivery.event == "sound.upload.failed"
        assert upload_id in delivery.body
        assert "file_size_check_failed" in delivery.body
