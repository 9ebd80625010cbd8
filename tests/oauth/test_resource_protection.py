"""Sound Kit endpoints accept Login Kit tokens; errors are exactly RFC 6750's.

``SCOPE_TABLE`` is the one place that says what every ``/v2/`` endpoint needs. A new
endpoint fails ``test_every_v2_endpoint_is_in_the_scope_table`` until it is added,
and the fail-closed hook refuses it until it declares a scope.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from api.auth import declared_scopes, public
from soundkit import accounts, grants
from soundkit.db import Database
from soundkit.models import App, User
from tests.conftest import World
from tests.oauth.conftest import Flow

BARE = 'Bearer realm="soundkit"'
INVALID = ('Bearer realm="soundkit", error="invalid_token", '
           'error_description="The access token is invalid, expired or revoked."')

#: (method, path) → scopes of which the token must hold at least one; empty = public.
SCOPE_TABLE: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/v2/sound/upload/"): frozenset({"sound.upload"}),
    ("POST", "/v2/sound/status/fetch/"): frozenset({"sound.upload", "sound.list"}),
    ("GET", "/v2/sound/list/"): frozenset({"sound.list"}),
    ("GET", "/v2/user/info/"): frozenset({"user.info.basic"}),
    ("GET", "/v2/auth/authorize/"): frozenset(),
    ("POST", "/v2/auth/authorize/"): frozenset(),
    ("POST", "/v2/oauth/token/"): frozenset(),
    ("POST", "/v2/oauth/revoke/"): frozenset(),
    ("POST", "/v2/oauth/introspect/"): frozenset(),
}


def mint(db: Database, world: World, scopes: list[str]) -> str:
    """A token with exactly ``scopes`` (even without the required one)."""
    with db.session() as session:
        app = session.scalar(select(App).where(App.client_key == world.client_key))
        user = session.get(User, world.creator.id)
        assert app is not None and user is not None
        accounts.grant_consent(session, user, app, scopes)
        issued = grants.issue_tokens(session, app_id=app.id, user_id=user.id,
                                     scope=",".join(scopes), family_id=grants.new_family_id())
    return issued.access_token


def call(client: FlaskClient, method: str, path: str, token: str | None = None,
         **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.open(path, method=method, headers=headers, **kwargs)


def _v2_routes(app: Flask) -> set[tuple[str, str]]:
    return {(method, rule.rule) for rule in app.url_map.iter_rules()
            if rule.rule.startswith("/v2/")
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}


def test_every_v2_endpoint_is_in_the_scope_table(app: Flask) -> None:
    assert _v2_routes(app) == set(SCOPE_TABLE)


@pytest.mark.parametrize(("method", "path"), sorted(SCOPE_TABLE))
def test_scope_of_every_v2_endpoint(app: Flask, client: FlaskClient, world: World, db: Database,
                                    method: str, path: str) -> None:
    needed = SCOPE_TABLE[(method, path)]
    adapter = app.url_map.bind("localhost")
    endpoint, _ = adapter.match(path, method=method)
    assert declared_scopes(app, endpoint) == needed
    if not needed:  # public: the bearer layer never answers
        response = call(client, method, path)
        assert "WWW-Authenticate" not in response.headers or not response.headers[
            "WWW-Authenticate"].startswith("Bearer")
        return
    missing = call(client, method, path)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == BARE
    others = [s for s in accounts.SCOPES if s not in needed]
    if others:
        refused = call(client, method, path, mint(db, world, others))
        assert refused.status_code == 403
        assert refused.get_json()["error"]["code"] == "scope_not_authorized"
        assert refused.headers["WWW-Authenticate"] == (
            f'Bearer realm="soundkit", error="insufficient_scope", '
            f'scope="{" ".join(sorted(needed, key=list(accounts.SCOPES).index))}"')
    for scope in needed:  # any one of them gets past the bearer check
        passed = call(client, method, path, mint(db, world, [scope]))
        assert passed.status_code not in (401, 403), (scope, passed.text)


def test_a_v2_view_that_declares_nothing_is_refused(app: Flask) -> None:
    app.add_url_rule("/v2/forgotten/", "forgotten", lambda: "open")
    app.add_url_rule("/v2/deliberate/", "deliberate", public(lambda: "open"))
    client = app.test_client()
    forgotten = client.get("/v2/forgotten/")
    assert forgotten.status_code == 403
    assert forgotten.get_json()["error"]["code"] == "scope_not_authorized"
    assert client.get("/v2/deliberate/").text == "open"


@pytest.mark.parametrize(("headers", "query"), [
    pytest.param({}, "", id="no-header"),
    pytest.param({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "", id="basic-scheme"),
    pytest.param({"Authorization": "Bearer"}, "", id="bearer-without-token"),
    pytest.param({"Authorization": "Token abc"}, "", id="other-scheme"),
    pytest.param({}, "?access_token={token}", id="token-in-query-string"),
])
def test_missing_bearer_token_gets_a_bare_challenge(
        client: FlaskClient, world: World, headers: dict[str, str], query: str) -> None:
    token = world.token()
    response = client.get("/v2/sound/list/" + query.format(token=token), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == BARE
    body = response.get_json()
    assert body["error"]["code"] == "access_token_invalid"
    assert body["error"]["log_id"] == response.headers["X-Request-Id"]


def test_token_in_a_form_body_is_ignored(client: FlaskClient, world: World) -> None:
    response = client.post("/v2/sound/status/fetch/", data={"access_token": world.token()})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == BARE


def test_unknown_token_is_invalid_token(client: FlaskClient, world: World) -> None:
    response = client.get("/v2/sound/list/", headers={"Authorization": "Bearer act.nope"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == INVALID


def test_revoked_token_is_invalid_token(signed_in: Flow) -> None:
    tokens = signed_in.tokens()
    revoke = signed_in.client.post("/v2/oauth/revoke/", data={
        "token": tokens["access_token"], "client_key": signed_in.web_key,
        "client_secret": signed_in.world.client_secret})
    assert revoke.status_code == 200
    response = signed_in.api(tokens["access_token"], "/v2/sound/list/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == INVALID


def test_expired_token_is_invalid_token(client: FlaskClient, world: World) -> None:
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False):
        token = world.token()
    with time_machine.travel(start + timedelta(hours=24, seconds=1), tick=False):
        response = client.get("/v2/sound/list/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == INVALID


def test_refresh_token_is_not_an_access_token(signed_in: Flow) -> None:
    tokens = signed_in.tokens()
    response = signed_in.api(tokens["refresh_token"])
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == INVALID


def test_insufficient_scope_names_the_scopes(client: FlaskClient, world: World,
                                             db: Database) -> None:
    token = mint(db, world, ["user.info.basic"])
    listing = client.get("/v2/sound/list/", headers={"Authorization": f"Bearer {token}"})
    assert listing.status_code == 403
    assert listing.headers["WWW-Authenticate"] == (
        'Bearer realm="soundkit", error="insufficient_scope", scope="sound.list"')
    status = client.post("/v2/sound/status/fetch/", json={"upload_id": "upl_x"},
                         headers={"Authorization": f"Bearer {token}"})
    assert status.status_code == 403
    assert status.headers["WWW-Authenticate"] == (
        'Bearer realm="soundkit", error="insufficient_scope", scope="sound.upload sound.list"')


def test_login_kit_tokens_work_on_sound_kit_endpoints(signed_in: Flow) -> None:
    tokens = signed_in.tokens()
    listing = signed_in.api(tokens["access_token"], "/v2/sound/list/")
    assert listing.status_code == 200
    assert listing.get_json()["data"] == {"sounds": [], "cursor": None, "has_more": False}
