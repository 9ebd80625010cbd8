"""Connected apps and Remove access: tokens, codes, uploads and the webhook, all at once."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import select

from soundkit import webhooks
from soundkit.models import (
    App,
    Consent,
    Notification,
    Sound,
    Upload,
    UploadStatus,
    User,
    WebhookDelivery,
)
from soundkit.security import open_id
from tests.conftest import RecordingDispatcher
from tests.oauth.conftest import Flow, csrf_token

HOOK_URL = "https://hooks.beatlab.example/soundkit"


def _upload(flow: Flow, app_key: str, username: str, status: UploadStatus) -> str:
    with flow.world.db.session() as session:
        app = session.scalar(select(App).where(App.client_key == app_key))
        user = session.scalar(select(User).where(User.username == username))
        assert app is not None and user is not None
        upload = Upload(app_id=app.id, user_id=user.id, status=status, title=f"{status} take")
        session.add(upload)
        session.flush()
        return upload.id


def _sound(flow: Flow, app_key: str, n: int) -> None:
    with flow.world.db.session() as session:
        app = session.scalar(select(App).where(App.client_key == app_key))
        assert app is not None
        session.add(Sound(id=f"snd_test{n}", owner_id=flow.world.creator.id, app_id=app.id,
                          upload_id=f"upl_test{n}", title="Take", duration_ms=6000,
                          sample_rate=44100, channels=2, source_codec="mp3",
                          original_key="o", playback_key="p", preview_key="v",
                          waveform_key="w", sha256="0" * 64))


def _remove(flow: Flow, client_key: str) -> Any:
    page = flow.client.get("/logout")  # any page with a form carries the session's token
    return flow.client.post(f"/settings/apps/{client_key}/remove",
                            data={"csrf_token": csrf_token(page.text)})


def _status(flow: Flow, upload_id: str) -> tuple[str, str | None]:
    with flow.world.db.session() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        return upload.status, upload.fail_reason


@pytest.fixture
def hooked(signed_in: Flow) -> Flow:
    with signed_in.world.db.session() as session:
        app = session.scalar(select(App).where(App.client_key == signed_in.web_key))
        assert app is not None
        app.webhook_url = HOOK_URL
    return signed_in


def test_connected_apps_lists_permissions_in_words_last_use_and_sounds(signed_in: Flow) -> None:
    tokens = signed_in.tokens(allow=["user.info.basic", "sound.list"])
    signed_in.desktop_tokens()
    _sound(signed_in, signed_in.web_key, 1)
    _sound(signed_in, signed_in.web_key, 2)
    before = signed_in.client.get("/settings/apps").text
    assert "Not used yet" in before
    signed_in.api(tokens["access_token"])
    page = signed_in.client.get("/settings/apps")
    assert page.status_code == 200
    card = re.search(r'aria-labelledby="app-' + signed_in.web_key + r'">(.*?)</li>\s*\n\s*\n',
                     page.text, re.S)
    assert card, page.text
    html = card.group(1)
    assert "Beat Lab" in html and "Beat Lab Inc" in html
    assert "Read your profile info (avatar, display name)" in html
    assert "See the sounds this app added and their status" in html
    assert "Add sounds to your sound library" not in html
    assert '<dd class="sounds-added">2</dd>' in html
    assert "<time datetime=" in html
    assert "Pocket Studio" in page.text


def test_connected_apps_needs_a_signed_in_creator(flow: Flow) -> None:
    response = flow.client.get("/settings/apps")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=/settings/apps")


def test_remove_access_revokes_tokens_codes_uploads_and_sends_the_webhook(
        hooked: Flow, dispatcher: RecordingDispatcher) -> None:
    flow = hooked
    web = flow.tokens()
    unused_code = flow.code(disable_auto_auth="1")["code"]
    operator_token = flow.world.token()
    desktop = flow.desktop_tokens()
    flow.world.new_creator("bob")
    processing = _upload(flow, flow.web_key, "alice", UploadStatus.PROCESSING)
    receiving = _upload(flow, flow.web_key, "alice", UploadStatus.PROCESSING_UPLOAD)
    done = _upload(flow, flow.web_key, "alice", UploadStatus.IN_LIBRARY)
    other_app = _upload(flow, flow.desktop_key, "alice", UploadStatus.PROCESSING)
    other_creator = _upload(flow, flow.web_key, "bob", UploadStatus.PROCESSING)

    response = _remove(flow, flow.web_key)
    assert response.status_code == 302 and response.headers["Location"] == "/settings/apps"
    page = flow.client.get("/settings/apps").text
    assert "Beat Lab can no longer use your account." in page
    assert f"app-{flow.web_key}" not in page
    assert f"app-{flow.desktop_key}" in page

    # Every token and code of that app for this creator is dead...
    for access in (web["access_token"], operator_token):
        assert flow.api(access).status_code == 401
    assert flow.refresh(web["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert flow.exchange(unused_code).get_json()["error"] == "invalid_grant"
    # ...and nothing else.
    assert flow.api(desktop["access_token"]).status_code == 200

    assert _status(flow, processing) == ("FAILED", "auth_removed")
    assert _status(flow, receiving) == ("FAILED", "auth_removed")
    assert _status(flow, done) == ("IN_LIBRARY", None)
    assert _status(flow, other_app) == ("PROCESSING", None)
    assert _status(flow, other_creator) == ("PROCESSING", None)

    with flow.world.db.session() as session:
        consent = session.scalar(select(Consent).join(App).where(App.client_key == flow.web_key))
        assert consent is not None and consent.revoked_at is not None
        notes = session.scalars(select(Notification.message)).all()
        assert len(notes) == 2 and all("removed this app's access" in n for n in notes)
        deliveries = session.scalars(select(WebhookDelivery)).all()
        assert [d.event for d in deliveries] == ["authorization.removed"]
        delivery = deliveries[0]
        body = json.loads(delivery.body)
    assert dispatcher.webhooks == [delivery.id]  # woken after the commit
    assert body["client_key"] == flow.web_key
    assert body["event"] == "authorization.removed"
    assert json.loads(body["content"]) == {"reason": "user disconnected"}
    assert body["user_openid"] == open_id(flow.world.settings.secret_key, flow.web_key,
                                          flow.world.creator.id) == web["open_id"]

    sent: list[tuple[str, bytes, dict[str, str]]] = []

    def post(url: str, raw: bytes, headers: dict[str, str], timeout: float) \
            -> webhooks.HttpResult:
        sent.append((url, raw, headers))
        return webhooks.HttpResult(204, None)

    with flow.world.db.session() as session:
        status = webhooks.deliver(session, delivery.id, secret_key=flow.world.settings.secret_key,
                                  timeout_s=5, max_age_s=3600, post=post)
    assert status == "delivered"
    url, raw, headers = sent[0]
    assert url == HOOK_URL
    assert webhooks.verify(flow.world.webhook_secret, raw, headers["Soundkit-Signature"])


def test_removing_twice_changes_nothing_more(hooked: Flow,
                                             dispatcher: RecordingDispatcher) -> None:
    hooked.tokens()
    _remove(hooked, hooked.web_key)
    again = _remove(hooked, hooked.web_key)
    assert again.status_code == 302
    assert "That app was not connected." in hooked.client.get("/settings/apps").text
    assert len(dispatcher.webhooks) == 1


def test_reconnecting_after_removal_starts_over_and_a_new_removal_is_a_new_event(
        hooked: Flow, dispatcher: RecordingDispatcher) -> None:
    hooked.tokens()
    _remove(hooked, hooked.web_key)
    page = hooked.client.get(hooked.authorize_url())
    assert page.status_code == 200, "no automatic approval after removal"
    tokens = hooked.tokens(allow=["user.info.basic"])
    assert tokens["scope"] == "user.info.basic"
    assert hooked.api(tokens["access_token"]).status_code == 200
    _remove(hooked, hooked.web_key)
    assert len(dispatcher.webhooks) == 2
    assert hooked.api(tokens["access_token"]).status_code == 401


def test_remove_access_needs_the_csrf_token(hooked: Flow,
                                            dispatcher: RecordingDispatcher) -> None:
    tokens = hooked.tokens()
    response = hooked.client.post(f"/settings/apps/{hooked.web_key}/remove")
    assert response.status_code == 400
    assert hooked.api(tokens["access_token"]).status_code == 200
    assert dispatcher.webhooks == []


def test_an_app_without_a_webhook_url_is_removed_without_one(
        signed_in: Flow, dispatcher: RecordingDispatcher) -> None:
    tokens = signed_in.tokens()
    assert _remove(signed_in, signed_in.web_key).status_code == 302
    assert signed_in.api(tokens["access_token"]).status_code == 401
    assert dispatcher.webhooks == []


def test_a_creator_cannot_remove_another_creators_connection(flow: Flow) -> None:
    flow.sign_in()
    alice = flow.tokens()
    flow.world.new_creator("bob")
    bob = flow.client.__class__(flow.client.application, flow.client.response_wrapper,
                                use_cookies=True)
    other = Flow(bob, flow.world, flow.desktop_key)
    other.sign_in("bob")
    _remove(other, flow.web_key)
    assert flow.api(alice["access_token"]).status_code == 200
