"""The token endpoint: single-use codes, refresh rotation and replay, lifetimes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from soundkit.models import AuthorizationCode, Token
from soundkit.security import hash_token
from tests.oauth.conftest import Flow

DAY = timedelta(days=1)


def test_token_response_has_the_documented_fields(signed_in: Flow) -> None:
    got = signed_in.code()
    response = signed_in.exchange(got["code"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"access_token", "expires_in", "open_id", "refresh_token",
                         "refresh_expires_in", "scope", "token_type"}
    assert body["expires_in"] == 86400 and body["refresh_expires_in"] == 31536000
    assert body["token_type"] == "Bearer"
    user = signed_in.api(body["access_token"]).get_json()["data"]["user"]
    assert body["open_id"] == user["open_id"]


def test_tokens_and_codes_are_stored_only_as_hashes(signed_in: Flow) -> None:
    got = signed_in.code()
    body = signed_in.exchange(got["code"]).get_json()
    with signed_in.world.db.session() as session:
        token = session.scalar(select(Token).where(
            Token.access_token_hash == hash_token(body["access_token"])))
        assert token is not None
        assert token.refresh_token_hash == hash_token(body["refresh_token"])
        code = session.scalar(select(AuthorizationCode))
        assert code is not None and code.code_hash == hash_token(got["code"])
        assert code.used_at is not None
        stored = " ".join(str(v) for row in (token, code) for v in vars(row).values())
        for raw in (body["access_token"], body["refresh_token"], got["code"]):
            assert raw not in stored


def test_a_code_works_once_and_its_reuse_revokes_what_it_issued(signed_in: Flow) -> None:
    got = signed_in.code()
    first = signed_in.exchange(got["code"]).get_json()
    rotated = signed_in.refresh(first["refresh_token"]).get_json()  # same family
    assert signed_in.api(rotated["access_token"]).status_code == 200
    again = signed_in.exchange(got["code"])
    assert again.status_code == 400
    assert again.get_json()["error"] == "invalid_grant"
    for access in (first["access_token"], rotated["access_token"]):
        assert signed_in.api(access).status_code == 401
    assert signed_in.refresh(rotated["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_reuse_does_not_touch_other_grants_of_the_same_creator(signed_in: Flow) -> None:
    stolen = signed_in.code()
    signed_in.exchange(stolen["code"])
    other = signed_in.tokens(disable_auto_auth="1")
    signed_in.exchange(stolen["code"])
    assert signed_in.api(other["access_token"]).status_code == 200


def test_refresh_rotates_and_the_old_refresh_token_stops_working(signed_in: Flow) -> None:
    first = signed_in.tokens()
    second = signed_in.refresh(first["refresh_token"]).get_json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["scope"] == first["scope"] and second["open_id"] == first["open_id"]
    assert second["expires_in"] == 86400 and second["refresh_expires_in"] == 31536000
    assert signed_in.api(second["access_token"]).status_code == 200
    # In-flight requests with the previous access token keep working until it expires...
    assert signed_in.api(first["access_token"]).status_code == 200
    third = signed_in.refresh(second["refresh_token"]).get_json()
    assert signed_in.api(third["access_token"]).status_code == 200


def test_replaying_a_rotated_refresh_token_revokes_the_whole_family(signed_in: Flow) -> None:
    first = signed_in.tokens()
    second = signed_in.refresh(first["refresh_token"]).get_json()
    replay = signed_in.refresh(first["refresh_token"])
    assert replay.status_code == 400
    assert replay.get_json()["error"] == "invalid_grant"
    assert "log_id" in replay.get_json()
    for access in (first["access_token"], second["access_token"]):
        assert signed_in.api(access).status_code == 401
    assert signed_in.refresh(second["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_another_app_cannot_use_or_burn_a_refresh_token(signed_in: Flow) -> None:
    tokens = signed_in.tokens()
    other = signed_in.world.new_app()
    response = signed_in.refresh(tokens["refresh_token"], client_key=other.app.client_key,
                                 secret=other.client_secret)
    assert response.get_json()["error"] == "invalid_grant"
    assert signed_in.refresh(tokens["refresh_token"]).status_code == 200


def test_refresh_needs_the_confidential_apps_secret(signed_in: Flow) -> None:
    tokens = signed_in.tokens()
    response = signed_in.refresh(tokens["refresh_token"], secret="")
    assert response.get_json()["error"] == "invalid_client"
    assert signed_in.refresh(tokens["refresh_token"]).status_code == 200


def test_public_app_refreshes_without_a_secret(signed_in: Flow) -> None:
    tokens = signed_in.desktop_tokens()
    response = signed_in.refresh(tokens["refresh_token"], client_key=signed_in.desktop_key)
    assert response.status_code == 200, response.text


def refresh_with_scope(flow: Flow, refresh_token: str, scope: str) -> dict[str, Any]:
    found: dict[str, Any] = flow.client.post("/v2/oauth/token/", data={
        "grant_type": "refresh_token", "refresh_token": refresh_token, "scope": scope,
        "client_key": flow.web_key, "client_secret": flow.world.client_secret}).get_json()
    return found


def test_refresh_may_narrow_but_never_widen_the_scope(signed_in: Flow) -> None:
    tokens = signed_in.tokens(allow=["user.info.basic", "sound.list"])
    # What the app first asked for, as client libraries re-send it: the scope the
    # creator switched off stays off, and the answer says what was granted.
    wider = refresh_with_scope(signed_in, tokens["refresh_token"],
                               "user.info.basic,sound.upload,sound.list")
    assert wider["scope"] == "user.info.basic,sound.list"
    upload = signed_in.client.post("/v2/sound/upload/", headers={
        "Authorization": f"Bearer {wider['access_token']}"})
    assert upload.status_code == 403
    narrower = refresh_with_scope(signed_in, wider["refresh_token"], "user.info.basic")
    assert narrower["scope"] == "user.info.basic"
    assert signed_in.api(narrower["access_token"], "/v2/sound/list/").status_code == 403


@pytest.mark.parametrize("scope", ["sound.upload", "user.info.basic,no.such.scope"])
def test_refresh_asking_only_for_ungranted_or_unknown_scopes_is_invalid_scope(
        signed_in: Flow, scope: str) -> None:
    tokens = signed_in.tokens(allow=["user.info.basic", "sound.list"])
    assert refresh_with_scope(signed_in, tokens["refresh_token"], scope)["error"] == \
        "invalid_scope"
    assert signed_in.refresh(tokens["refresh_token"]).status_code == 200  # not spent


@pytest.mark.parametrize(("after", "works"), [
    (timedelta(minutes=4, seconds=59), True),
    (timedelta(minutes=5, seconds=1), False),
])
def test_codes_expire_after_five_minutes(signed_in: Flow, after: timedelta, works: bool) -> None:
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False):
        got = signed_in.code()
    with time_machine.travel(start + after, tick=False):
        response = signed_in.exchange(got["code"])
    assert (response.status_code == 200) is works
    if not works:
        assert response.get_json()["error"] == "invalid_grant"


def test_access_tokens_live_24_hours_and_refresh_tokens_365_days(signed_in: Flow) -> None:
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False):
        tokens = signed_in.tokens()
    with time_machine.travel(start + DAY - timedelta(seconds=1), tick=False):
        assert signed_in.api(tokens["access_token"]).status_code == 200
    with time_machine.travel(start + DAY + timedelta(seconds=1), tick=False):
        expired = signed_in.api(tokens["access_token"])
        assert expired.status_code == 401
        assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
        fresh = signed_in.refresh(tokens["refresh_token"]).get_json()
    second_start = start + DAY + timedelta(seconds=1)
    with time_machine.travel(second_start + 365 * DAY - timedelta(seconds=1), tick=False):
        later = signed_in.refresh(fresh["refresh_token"])
        assert later.status_code == 200
    with time_machine.travel(second_start + 2 * 365 * DAY + timedelta(seconds=1), tick=False):
        too_late = signed_in.refresh(later.get_json()["refresh_token"])
        assert too_late.get_json()["error"] == "invalid_grant"


def test_unknown_grant_types_and_missing_fields_are_rfc6749_errors(signed_in: Flow) -> None:
    cases = [
        ({"grant_type": "password", "username": "alice", "password": "x"},
         "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code"}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
    ]
    for form, error in cases:
        form = {**form, "client_key": signed_in.web_key,
                "client_secret": signed_in.world.client_secret or ""}
        response = signed_in.client.post("/v2/oauth/token/", data=form)
        assert response.status_code == 400, (form, response.text)
        body = response.get_json()
        assert body["error"] == error, (form, body)
        assert body["log_id"] == response.headers["X-Request-Id"]


def test_token_parameters_in_the_query_string_are_ignored(signed_in: Flow) -> None:
    got = signed_in.code()
    response = signed_in.client.post(
        "/v2/oauth/token/?grant_type=authorization_code&code=" + got["code"],
        data={"client_key": signed_in.web_key, "client_secret": signed_in.world.client_secret,
              "redirect_uri": "https://beatlab.example/callback"})
    assert response.get_json()["error"] == "unsupported_grant_type"
