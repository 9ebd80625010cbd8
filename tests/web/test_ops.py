"""The operator console through the Flask test client: who gets in, what it shows, actions.

The jobs it shows are made for real: pushed through the upload endpoint and run by the
worker's own ingest code with ffmpeg (a ready sound, a refused file, an internal
failure from a vanished upload), plus a webhook that really fails to connect.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from api import create_app
from soundkit import jobs, ops
from soundkit.db import Database
from soundkit.models import AuditEntry, Notification, Upload, WebhookDelivery, utcnow
from soundkit.queue import Dispatcher, make_celery
from soundkit.settings import Settings
from soundkit.storage import LocalStore
from tests.conftest import RecordingDispatcher
from tests.web.conftest import Console, People, run_worker, session_csrf
from tests.web.tunes import make_tune

OPS_TOKEN = "ops-token-for-tests-0123456789abcdef"


def api(client: FlaskClient, view: str) -> Any:
    response = client.get(f"/ops/api/{view}")
    assert response.status_code == 200, response.text
    assert response.get_json()["error"]["code"] == "ok"
    return response.get_json()["data"]


def audit(db: Database, action: str) -> list[AuditEntry]:
    with db.session() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


# --- Who gets in ------------------------------------------------------------------------------


def test_signed_out_browsers_get_nothing(people: People) -> None:
    client = people.browser()
    page = client.get("/ops")
    assert page.status_code == 302 and page.headers["Location"] == "/login?next=/ops"
    for path in ("/ops/api/", "/ops/api/overview", "/ops/api/workers"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.get_json()["error"]["code"] == "access_token_invalid"
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="soundkit-ops"'
    assert client.get("/metrics").status_code == 401
    assert client.get("/ops/workers").status_code == 302


def test_a_creator_cannot_open_the_console(people: People, db: Database) -> None:
    creator = people.creator()
    page = creator.get("/ops")
    assert page.status_code == 403 and "Operators only" in page.text
    assert 'href="/ops"' not in creator.get("/library").text  # not in the navigation
    refused = creator.get("/ops/api/overview")
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "scope_not_authorized"
    assert creator.get("/metrics").status_code == 403
    token = session_csrf(creator)
    for path in ("/ops/uploads/upl_x/retry", "/ops/uploads/upl_x/cancel",
                 "/ops/webhooks/1/resend"):
        assert creator.post(path, data={"csrf_token": token}).status_code == 403, path
    assert creator.post("/ops/api/uploads/upl_x/retry",
                        headers={"X-CSRFToken": token}).status_code == 403
    assert audit(db, "upload.retry") == []


def test_an_operator_gets_in(people: People) -> None:
    operator = people.ops()
    page = operator.get("/ops")
    assert page.status_code == 200 and "<h1>Operations</h1>" in page.text
    assert 'href="/ops"' in page.text  # in the navigation
    index = api(operator, "")
    assert set(index["views"]) >= {"overview", "queues", "jobs", "throughput", "stages",
                                   "failures", "stalled", "webhooks", "workers", "audit"}
    assert operator.get("/ops/api/nothing").status_code == 404


def test_the_ops_token_opens_the_json_and_metrics_but_no_action(
        make_settings: Callable[..., Settings], people: People) -> None:
    app = create_app(make_settings(SOUNDKIT_OPS_TOKEN=OPS_TOKEN), dispatcher=RecordingDispatcher())
    client = app.test_client()
    good = {"Authorization": f"Bearer {OPS_TOKEN}"}
    assert client.get("/ops/api/jobs", headers=good).status_code == 200
    assert client.get("/metrics", headers=good).status_code == 200
    for bad in (f"Bearer {OPS_TOKEN}x", f"Basic {OPS_TOKEN}", "Bearer "):
        assert client.get("/ops/api/jobs", headers={"Authorization": bad}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": bad}).status_code == 401
    assert client.get("/ops", headers=good).status_code == 302  # the page needs a person
    refused = client.post("/ops/api/uploads/upl_x/retry", headers=good)
    assert refused.status_code in (400, 403)  # no session: neither CSRF token nor operator
    assert people.browser().get("/ops/api/jobs", headers=good).status_code == 401  # not set here


# --- What it shows ------------------------------------------------------------------------------


def test_the_overview_reports_every_kind_of_job(people: People, console: Console) -> None:
    data = api(people.ops(), "overview")["overview"]

    uploads = {(u["status"], u["fail_reason"]): u["count"] for u in data["uploads"]}
    assert uploads == {("IN_LIBRARY", None): 1, ("FAILED", "file_format_check_failed"): 2,
                       ("FAILED", "internal"): 1, ("PROCESSING", None): 2}
    jobs_ = {(j["status"], j["stage"]): j["count"] for j in data["jobs"]}
    assert jobs_[("PROCESSING", "queued")] == 2 and jobs_[("IN_LIBRARY", "done")] == 1

    assert data["throughput"]["ready"] == 1 and data["throughput"]["failed"] == 3
    assert data["throughput"]["received"] == 6
    assert sum(b["ready"] for b in data["throughput"]["buckets"]) == 1
    assert len(data["throughput"]["buckets"]) == 12

    stages = {s["stage"]: s for s in data["stage_durations"]}
    assert len(stages) == len(data["stage_durations"]) == 5  # one row per stage
    assert list(stages)[:5] == ["validating", "transcoding", "fingerprinting", "storing",
                                "attaching"]
    assert stages["transcoding"]["count"] >= 1 and stages["transcoding"]["p50_s"] > 0
    assert stages["validating"]["not_ok"] >= 2  # the refused files and the vanished one
    assert stages["transcoding"]["p50_s"] <= stages["transcoding"]["p99_s"] \
        <= stages["transcoding"]["max_s"]

    assert data["oldest_waiting"]["upload_id"] == console.waiting
    assert [w["upload_id"] for w in data["waiting"]] == [console.waiting]
    [stalled] = data["stalled"]
    assert stalled["upload_id"] == console.running
    assert stalled["why"] == "lease of gone-worker:42 expired"

    failures = {f["fail_reason"]: f for f in data["failures"]}
    assert failures["file_format_check_failed"]["count"] == 2
    assert failures["file_format_check_failed"]["last_24h"] == 2
    assert not failures["file_format_check_failed"]["retryable"]
    [lost] = failures["internal"]["jobs"]
    assert lost["upload_id"] == console.internal and failures["internal"]["retryable"]
    assert "FileNotFoundError" in lost["error_detail"] and lost["creator"] == "alice"
    refused_details = [j["error_detail"] for j in failures["file_format_check_failed"]["jobs"]]
    assert all(detail for detail in refused_details)

    hooks = data["webhooks"]
    assert hooks["pending"] == 1 and hooks["failing"] == 1 and hooks["failed"] == 0
    [delivery] = hooks["deliveries"]
    assert delivery["id"] == console.delivery and delivery["app"] == "Hook Lab"
    assert delivery["event"] == "sound.upload.failed" and delivery["attempts"] == 1
    assert "ConnectionError" in delivery["last_error"]
    assert data["broker"] == {"transport": "filesystem", "reachable": True,
                              "queues": {"ingest": 0, "webhooks": 0, "maintenance": 0},
                              "reserved": None, "error": None}


def test_the_page_shows_the_same(people: People, console: Console) -> None:
    page = people.ops().get("/ops").text
    assert f'<tr data-upload-id="{console.internal}">' in page
    internal = page[page.index('data-reason="internal"'):]
    internal = internal[:internal.index("</table>")]
    assert "FileNotFoundError" in internal
    assert f'action="/ops/uploads/{console.internal}/retry"' in internal
    refused = page[page.index('data-reason="file_format_check_failed"'):]
    refused = refused[:refused.index("</table>")]
    assert "/retry" not in refused  # only internal failures can be retried
    assert f'action="/ops/uploads/{console.waiting}/cancel"' in page
    assert f'action="/ops/webhooks/{console.delivery}/resend"' in page
    assert "lease of gone-worker:42 expired" in page
    assert re.search(r'id="tile-stalled">1<', page)
    assert re.search(r'id="tile-failed">3<', page)
    for stage in ("validating", "transcoding", "attaching"):
        assert f'<tr data-stage="{stage}">' in page


# --- Actions -------------------------------------------------------------------------------------


def test_retry_puts_an_internal_failure_back_and_it_then_succeeds(
        people: People, console: Console, settings: Settings, db: Database,
        dispatcher: RecordingDispatcher) -> None:
    operator = people.ops()
    token = session_csrf(operator)
    done = operator.post(f"/ops/uploads/{console.internal}/retry", data={"csrf_token": token})
    assert done.status_code == 302 and done.headers["Location"] == "/ops#failures"
    page = operator.get("/ops").text
    assert f"{console.internal} is back in the queue." in page
    assert re.search(rf'<tr data-action="upload.retry" data-target="{console.internal}">'
                     rf"<td>[^<]+</td><td>olga</td>", page)
    [entry] = audit(db, "upload.retry")
    assert entry.actor == "olga" and entry.target == console.internal
    assert "FileNotFoundError" in (entry.detail or {})["error_detail"]
    assert dispatcher.uploads[-1] == console.internal
    with db.session() as session:
        upload = session.get(Upload, console.internal)
        assert upload is not None
        assert (upload.status, upload.stage, upload.attempts) == ("PROCESSING", "queued", 0)
    assert run_worker(people.app, settings, console.internal) == "done"  # the bytes are back
    with db.session() as session:
        assert session.get(Upload, console.internal).status == "IN_LIBRARY"  # type: ignore[union-attr]

    again = operator.post(f"/ops/uploads/{console.internal}/retry", data={"csrf_token": token})
    assert again.status_code == 302
    assert "Nothing was changed: only jobs that failed with internal can be retried" \
        in operator.get("/ops").text
    assert len(audit(db, "upload.retry")) == 1


def test_a_refused_file_cannot_be_retried(people: People, console: Console,
                                          db: Database) -> None:
    operator = people.ops()
    response = operator.post(f"/ops/api/uploads/{console.refused}/retry",
                             headers={"X-CSRFToken": session_csrf(operator)})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_params"
    assert "file_format_check_failed" in response.get_json()["error"]["message"]
    missing = operator.post("/ops/api/uploads/upl_nothere/retry",
                            headers={"X-CSRFToken": session_csrf(operator)})
    assert missing.status_code == 404
    assert operator.post(f"/ops/uploads/{console.internal}/retry").status_code == 400  # no CSRF
    assert audit(db, "upload.retry") == []


def test_cancel_ends_a_waiting_job_and_tells_everyone(people: People, console: Console,
                                                      db: Database, store: LocalStore) -> None:
    operator = people.ops()
    response = operator.post(f"/ops/api/uploads/{console.waiting}/cancel",
                             headers={"X-CSRFToken": session_csrf(operator)})
    assert response.status_code == 200, response.text
    assert response.get_json()["data"]["message"] == f"{console.waiting} was cancelled."
    with db.session() as session:
        upload = session.get(Upload, console.waiting)
        assert upload is not None and upload.status == "FAILED"
        assert upload.fail_reason == "upload_cancelled"
        assert upload.error_detail == "cancelled by operator olga"
        told = session.scalars(select(Notification.message).where(
            Notification.upload_id == console.waiting)).all()
    assert told == [f"Waiting: {jobs.FAIL_REASON_WORDS['upload_cancelled']}"]
    assert not store.exists(f"incoming/{console.waiting}")
    [entry] = audit(db, "upload.cancel")
    assert (entry.actor, entry.target) == ("olga", console.waiting)

    # A job a worker holds is not "waiting": refused, and nothing changes.
    with db.session() as session:
        live = jobs.claim(session, console.running, "alive-worker:7", 600)
        assert live is not None
    refused = operator.post(f"/ops/api/uploads/{console.running}/cancel",
                            headers={"X-CSRFToken": session_csrf(operator)})
    assert refused.status_code == 400
    assert "being processed by alive-worker:7" in refused.get_json()["error"]["message"]
    with db.session() as session:
        assert session.get(Upload, console.running).status == "PROCESSING"  # type: ignore[union-attr]


def test_resend_makes_a_delivery_due_now(people: People, console: Console, db: Database,
                                         dispatcher: RecordingDispatcher) -> None:
    operator = people.ops()
    before = utcnow()
    response = operator.post(f"/ops/webhooks/{console.delivery}/resend",
                             data={"csrf_token": session_csrf(operator)})
    assert response.status_code == 302 and response.headers["Location"] == "/ops#webhooks"
    assert dispatcher.webhooks[-1] == console.delivery
    with db.session() as session:
        delivery = session.get(WebhookDelivery, console.delivery)
        assert delivery is not None and delivery.status == "pending"
        assert before - timedelta(seconds=1) <= delivery.next_attempt_at <= utcnow()
    [entry] = audit(db, "webhook.resend")
    assert entry.actor == "olga" and entry.target == str(console.delivery)
    assert (entry.detail or {})["attempts"] == 1
    assert operator.post("/ops/api/webhooks/999/resend",
                         headers={"X-CSRFToken": session_csrf(operator)}).status_code == 404


# --- The broker ----------------------------------------------------------------------------------


def test_queue_depth_counts_the_filesystem_brokers_message_files(settings: Settings) -> None:
    sender = Dispatcher(make_celery(settings))
    assert sender.wake_upload("upl_a") and sender.wake_upload("upl_b")
    assert sender.wake_webhook(7)
    depths = ops.queue_depths(settings)
    assert depths.reachable and depths.transport == "filesystem"
    assert depths.queues == {"ingest": 2, "webhooks": 1, "maintenance": 0}


def test_queue_depth_is_llen_on_redis_with_every_priority(
        make_settings: Callable[..., Settings], redis_url: str) -> None:
    settings = make_settings(BROKER_URL=redis_url)
    celery = make_celery(settings)
    sender = Dispatcher(celery)
    for upload_id in ("upl_a", "upl_b", "upl_c"):
        assert sender.wake_upload(upload_id)
    celery.send_task("soundkit.ingest", args=["upl_d"], priority=6)
    depths = ops.queue_depths(settings)
    assert depths.reachable and depths.transport == "redis"
    assert depths.queues == {"ingest": 4, "webhooks": 0, "maintenance": 0}
    assert depths.reserved == 0


def test_an_unreachable_broker_is_reported_not_raised(
        make_settings: Callable[..., Settings]) -> None:
    from tests.integration.stack import free_port

    depths = ops.queue_depths(make_settings(BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"))
    assert not depths.reachable and "ConnectionError" in (depths.error or "")


def test_liveness_says_when_no_worker_answers(people: People,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from api.web import ops as ops_pages

    monkeypatch.setattr(ops_pages, "FILESYSTEM_WORKER_TIMEOUT_S", 0.5)
    data = api(people.ops(), "workers")["workers"]
    assert data["broadcast"] is True and data["transport"] == "filesystem"
    assert data["workers"] == [] and data["error"] == "no worker answered within 0.5 s"
    fragment = people.ops().get("/ops/workers?fragment=1").text
    assert "No worker answered" in fragment and "<html" not in fragment


def test_liveness_says_when_the_broker_cannot_broadcast(tmp_path: Path) -> None:
    from celery import Celery

    celery = Celery("no-broadcast", broker=f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    data = ops.worker_liveness(celery, timeout_s=0.1)
    assert data["broadcast"] is False and data["workers"] == []
    assert "cannot broadcast" in data["error"]


def test_overview_without_any_job(people: People, app: Flask) -> None:
    data = api(people.ops(), "overview")["overview"]
    assert data["uploads"] == [] and data["oldest_waiting"] is None
    assert data["failures"] == [] and data["stalled"] == []
    assert data["webhooks"]["pending"] == 0 and data["webhooks"]["oldest_pending_age_s"] is None
    page = people.ops().get("/ops").text
    assert "Nothing is waiting." in page and "No upload has failed." in page


@pytest.mark.integration
def test_console_metrics_and_library_on_postgresql(
        make_settings: Callable[..., Settings], pg_db_url: str, track: Path,
        tmp_path: Path) -> None:
    from soundkit import accounts
    from tests.conftest import build_world
    from tests.web.conftest import PASSWORD, push, sign_in

    settings = make_settings(DATABASE_URL=pg_db_url, SOUNDKIT_OPS_TOKEN=OPS_TOKEN)
    db = Database(settings.database_url)
    world = build_world(db, settings, webhook_url="http://127.0.0.1:9/hook")
    with db.session() as session:
        accounts.create_user(session, "olga", PASSWORD, operator=True)
    app = create_app(settings, dispatcher=RecordingDispatcher())
    try:
        ready = push(app, world.token(), track, "Night Drive")
        assert run_worker(app, settings, ready) == "done"
        notes = tmp_path / "notes.mp3"
        notes.write_bytes(b"not audio\n" * 300)
        refused = push(app, world.token(), notes, "Notes")
        assert run_worker(app, settings, refused) == "done"
        waiting = push(app, world.token(), make_tune(tmp_path / "w.wav", 5.5, seed=31), "W")

        operator = sign_in(app.test_client(), "olga")
        data = api(operator, "overview")["overview"]
        assert {(u["status"], u["fail_reason"]): u["count"] for u in data["uploads"]} == {
            ("IN_LIBRARY", None): 1, ("FAILED", "file_format_check_failed"): 1,
            ("PROCESSING", None): 1}
        assert data["failures"][0]["last_24h"] == 1
        assert data["oldest_waiting"]["upload_id"] == waiting
        assert len(data["stage_durations"]) == 5
        assert data["webhooks"]["pending"] == 2 and data["throughput"]["ready"] == 1
        metrics = app.test_client().get("/metrics",
                                        headers={"Authorization": f"Bearer {OPS_TOKEN}"})
        assert 'soundkit_uploads{fail_reason="",status="IN_LIBRARY"} 1.0' in metrics.text
        assert 'soundkit_stage_duration_seconds_count{outcome="ok",stage="attaching"} 1.0' \
            in metrics.text
        response = operator.post(f"/ops/api/uploads/{waiting}/cancel",
                                 headers={"X-CSRFToken": session_csrf(operator)})
        assert response.status_code == 200, response.text

        creator = sign_in(app.test_client(), "alice")
        page = creator.get("/library").text
        assert page.index(waiting) < page.index(refused) < page.index(ready)
        with db.session() as session:
            sound_id = session.scalars(select(Upload.sound_id).where(Upload.id == ready)).one()
        done = creator.post(f"/library/sounds/{sound_id}/delete",
                            data={"csrf_token": session_csrf(creator)})
        assert done.status_code == 302 and ready not in creator.get("/library").text
    finally:
        app.extensions["soundkit"].db.dispose()
        db.dispose()


def test_sounds_the_fingerprint_stage_flagged_are_listed_for_review(
        people: People, console: Console, db: Database) -> None:
    from sqlalchemy import update

    match = {"rule": "copyright", "title": "Theme One", "rights_holder": "Label X",
             "catalog_track_id": 3, "score": 12.0, "offset_s": 4.2, "speed": 1.0}
    operator = people.ops()
    assert api(operator, "flagged")["flagged"] == []  # a plain ready sound is not listed
    with db.session() as session:
        session.execute(update(Upload).where(Upload.id == console.ready)
                        .values(match_detail={"action": "flag", "matches": [match]}))
    [flagged] = api(operator, "flagged")["flagged"]
    assert flagged["upload_id"] == console.ready and flagged["matches"] == [match]
    page = operator.get("/ops").text
    assert "copyright: Theme One (Label X) · score 12.0 at 4.2 s" in page
