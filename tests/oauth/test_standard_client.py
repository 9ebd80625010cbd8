"""requests-oauthlib, the OAuth 2.0 client most Python apps use, against Login Kit.

It knows nothing of this project and behaves as it does for any provider: PKCE S256,
``state`` checked, the code exchanged with the secret in the body, and on every refresh
it sends the scope it first asked for, even after the creator switched an optional one
off. The api runs over real HTTP; the creator's side is a browser-like session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from requests_oauthlib import OAuth2Session

from soundkit.settings import Settings
from tests.conftest import RecordingDispatcher
from tests.oauth.conftest import PASSWORD
from tests.oauth.live import browse_and_consent, serve_with_web_app

ASKED = ["user.info.basic", "sound.upload", "sound.list"]


@pytest.fixture
def live(make_settings: Callable[..., Settings], dispatcher: RecordingDispatcher,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    # The api is plain HTTP on loopback; oauthlib refuses that unless told otherwise,
    # and by default raises when the granted scope differs from the asked one.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    with serve_with_web_app(make_settings, dispatcher, name="Loop Lab",
                            developer="Loop Lab Ltd") as found:
        yield found


def test_code_pkce_refresh_replay_and_revoke_with_requests_oauthlib(
        live: dict[str, Any]) -> None:
    api, key, secret = live["api"], live["client_key"], live["client_secret"]
    app_client = OAuth2Session(key, redirect_uri=live["redirect_uri"], scope=ASKED,
                               pkce="S256")
    url, _state = app_client.authorization_url(f"{api}/v2/auth/authorize/")
    landed = browse_and_consent(url, "alice", PASSWORD, allow=["user.info.basic", "sound.list"])
    token = app_client.fetch_token(f"{api}/v2/oauth/token/", authorization_response=landed,
                                   client_secret=secret, include_client_id=True)
    assert token["scope"] == ["user.info.basic", "sound.list"]
    assert app_client.get(f"{api}/v2/user/info/").json()["data"]["user"]["open_id"] == \
        token["open_id"]

    first_refresh = token["refresh_token"]
    renewed = app_client.refresh_token(f"{api}/v2/oauth/token/", client_id=key,
                                       client_secret=secret, include_client_id=True)
    assert renewed["refresh_token"] != first_refresh
    assert renewed["scope"] == ["user.info.basic", "sound.list"]  # the switch stays off
    assert app_client.get(f"{api}/v2/sound/list/").status_code == 200
    assert app_client.post(f"{api}/v2/sound/upload/").status_code == 403

    replayed = app_client.post(f"{api}/v2/oauth/token/", data={
        "grant_type": "refresh_token", "refresh_token": first_refresh,
        "client_key": key, "client_secret": secret}, withhold_token=True)
    assert replayed.json()["error"] == "invalid_grant"
    assert app_client.get(f"{api}/v2/user/info/").status_code == 401  # the family is revoked
