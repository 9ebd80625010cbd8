"""User info (open_id / union_id), revocation (RFC 7009) and introspection (RFC 7662)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from soundkit import accounts
from tests.oauth.conftest import WEB_REDIRECT, Flow, csrf_token


def _basic(key: str, secret: str | None) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}


def _creds(flow: Flow) -> dict[str, str]:
    return {"client_key": flow.web_key, "client_secret": flow.world.client_secret or ""}


# --- User info --------------------------------------------------------------------------------


def test_user_info_returns_the_asked_fields_and_never_the_username(signed_in: Flow) -> None:
    token = signed_in.tokens()["access_token"]
    response = signed_in.client.get("/v2/user/info/?fields=open_id,display_name",
                                    headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["error"]["code"] == "ok"
    assert set(body["data"]["user"]) == {"open_id", "display_name"}
    assert body["data"]["user"]["display_name"] == "Alice A."
    full = signed_in.api(token).get_json()["data"]["user"]
    assert set(full) == {"open_id", "union_id", "avatar_url", "display_name"}
    assert "alice" not in response.text.replace("Alice A.", "")
    assert "alice" not in str(full).replace("Alice A.", "")


def test_unknown_user_info_fields_are_invalid_params(signed_in: Flow) -> None:
    token = signed_in.tokens()["access_token"]
    response = signed_in.client.get("/v2/user/info/?fields=open_id,username",
                                    headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_params"


def _user(flow: Flow, access_token: str) -> dict[str, str]:
    user: dict[str, str] = flow.api(access_token).get_json()["data"]["user"]
    return user


def test_open_id_is_per_app_and_union_id_is_per_developer(signed_in: Flow) -> None:
    web = _user(signed_in, signed_in.tokens()["access_token"])  # Beat Lab Inc
    desktop = _user(signed_in, signed_in.desktop_tokens()["access_token"])  # Beat Lab Inc
    with signed_in.world.db.session() as session:
        other = accounts.create_app(session, name="Loop Forge", redirect_uris=[WEB_REDIRECT],
                                    developer="Forge Audio Ltd",
                                    secret_key=signed_in.world.settings.secret_key)
        key, secret = other.app.client_key, other.client_secret
    code = signed_in.code(client_key=key)["code"]
    forge = _user(signed_in, signed_in.exchange(code, client_key=key, secret=secret)
                  .get_json()["access_token"])
    assert web["open_id"] != desktop["open_id"] != forge["open_id"] != web["open_id"]
    assert web["union_id"] == desktop["union_id"]
    assert forge["union_id"] != web["union_id"]


def test_open_id_differs_between_creators_of_one_app(flow: Flow) -> None:
    flow.sign_in()
    alice = _user(flow, flow.tokens()["access_token"])
    flow.world.new_creator("bob")
    flow.client.post("/logout", data={"csrf_token": _csrf(flow)})
    flow.sign_in("bob")
    bob = _user(flow, flow.tokens()["access_token"])
    assert alice["open_id"] != bob["open_id"]
    assert alice["union_id"] != bob["union_id"]


def _csrf(flow: Flow) -> str:
    return csrf_token(flow.client.get("/logout").text)


# --- Revocation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
@pytest.mark.parametrize("auth", ["body", "basic"])
def test_revoking_either_token_ends_the_grant(signed_in: Flow, which: str, auth: str) -> None:
    tokens = signed_in.tokens()
    data: dict[str, Any] = {"token": tokens[which], "token_type_hint": which}
    headers: dict[str, str] = {}
    if auth == "body":
        data.update(_creds(signed_in))
    else:
        headers = _basic(signed_in.web_key, signed_in.world.client_secret)
    response = signed_in.client.post("/v2/oauth/revoke/", data=data, headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {}
    assert signed_in.api(tokens["access_token"]).status_code == 401
    assert signed_in.refresh(tokens["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_a_wrong_hint_still_finds_the_token(signed_in: Flow) -> None:
    tokens = signed_in.tokens()
    signed_in.client.post("/v2/oauth/revoke/", data={
        "token": tokens["refresh_token"], "token_type_hint": "access_token",
        **_creds(signed_in)})
    assert signed_in.api(tokens["access_token"]).status_code == 401


def test_revoking_an_unknown_token_is_fine(signed_in: Flow) -> None:
    response = signed_in.client.post("/v2/oauth/revoke/",
                                     data={"token": "act.unknown", **_creds(signed_in)})
    assert response.status_code == 200


def test_revocation_needs_client_authentication(signed_in: Flow) -> None:
    tokens = signed_in.tokens()
    wrong = signed_in.client.post("/v2/oauth/revoke/", data={
        "token": tokens["access_token"], "client_key": signed_in.web_key,
        "client_secret": "sks_wrong"})
    assert wrong.status_code == 401
    assert wrong.get_json()["error"] == "invalid_client"
    assert signed_in.api(tokens["access_token"]).status_code == 200


def test_an_app_cannot_revoke_another_apps_token(signed_in: Flow) -> None:
    tokens = signed_in.tokens()
    other = signed_in.world.new_app()
    response = signed_in.client.post("/v2/oauth/revoke/", data={
        "token": tokens["access_token"], "client_key": other.app.client_key,
        "client_secret": other.client_secret})
    assert response.status_code == 400
    assert signed_in.api(tokens["access_token"]).status_code == 200


def test_public_app_revokes_with_its_client_key_alone(signed_in: Flow) -> None:
    tokens = signed_in.desktop_tokens()
    response = signed_in.client.post("/v2/oauth/revoke/", data={
        "token": tokens["refresh_token"], "client_key": signed_in.desktop_key})
    assert response.status_code == 200
    assert signed_in.api(tokens["access_token"]).status_code == 401


# --- Introspection ----------------------------------------------------------------------------


def _introspect(flow: Flow, token: str, **extra: str) -> dict[str, Any]:
    response = flow.client.post("/v2/oauth/introspect/", data={"token": token, **extra},
                                headers=_basic(flow.web_key, flow.world.client_secret))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.get_json()
    return body


def test_introspection_describes_a_live_access_token(signed_in: Flow) -> None:
    tokens = signed_in.tokens(allow=["user.info.basic", "sound.list"])
    body = _introspect(signed_in, tokens["access_token"])
    assert body["active"] is True
    assert body["client_id"] == signed_in.web_key
    assert body["scope"] == "user.info.basic sound.list"
    assert body["token_type"] == "Bearer"
    assert body["sub"] == body["open_id"] == tokens["open_id"]
    assert body["exp"] - body["iat"] == 86400
    assert "username" not in body


def test_introspection_of_refresh_tokens_rotation_and_revocation(signed_in: Flow) -> None:
    tokens = signed_in.tokens()
    live = _introspect(signed_in, tokens["refresh_token"], token_type_hint="refresh_token")
    assert live["active"] is True and live["token_type"] == "refresh_token"
    assert live["exp"] - live["iat"] == 365 * 86400
    signed_in.refresh(tokens["refresh_token"])
    assert _introspect(signed_in, tokens["refresh_token"]) == {"active": False}
    assert _introspect(signed_in, tokens["access_token"])["active"] is True
    signed_in.client.post("/v2/oauth/revoke/", data={"token": tokens["access_token"],
                                                     **_creds(signed_in)})
    assert _introspect(signed_in, tokens["access_token"]) == {"active": False}


def test_introspection_hides_other_apps_tokens_and_unknown_ones(signed_in: Flow) -> None:
    desktop = signed_in.desktop_tokens()
    assert _introspect(signed_in, desktop["access_token"]) == {"active": False}
    assert _introspect(signed_in, "act.unknown") == {"active": False}


def test_public_apps_cannot_introspect(signed_in: Flow) -> None:
    tokens = signed_in.desktop_tokens()
    response = signed_in.client.post("/v2/oauth/introspect/", data={
        "token": tokens["access_token"], "client_key": signed_in.desktop_key})
    assert response.status_code in (400, 401)
    assert response.get_json()["error"] == "invalid_client"

