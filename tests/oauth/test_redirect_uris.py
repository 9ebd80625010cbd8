"""Redirect URIs match exactly, and a bad one gets an error page, never a redirect."""

from __future__ import annotations

import pytest

from soundkit import accounts
from tests.oauth.conftest import DESKTOP_REDIRECT, WEB_REDIRECT, Flow, query

#: Near misses of the registered https://beatlab.example/callback.
WEB_NEAR_MISSES = [
    pytest.param("https://beatlab.example/callback/", id="trailing-slash"),
    pytest.param("https://BEATLAB.example/callback", id="host-case"),
    pytest.param("https://beatlab.example/Callback", id="path-case"),
    pytest.param("HTTPS://beatlab.example/callback", id="scheme-case"),
    pytest.param("https://beatlab.example/callback?next=/x", id="extra-query"),
    pytest.param("https://beatlab.example/callback?", id="empty-query"),
    pytest.param("https://beatlab.example/callback#frag", id="fragment"),
    pytest.param("https://evil.example@beatlab.example/callback", id="userinfo"),
    pytest.param("https://beatlab.example@evil.example/callback", id="userinfo-host-swap"),
    pytest.param("https://beatlab.example:8443/callback", id="other-port"),
    pytest.param("https://beatlab.example:443/callback", id="explicit-default-port"),
    pytest.param("http://beatlab.example/callback", id="http-downgrade"),
    pytest.param("https://beatlab.example.evil.example/callback", id="suffix-host"),
    pytest.param("https://evil.example/https://beatlab.example/callback", id="embedded"),
    pytest.param("https://beatlab.example/callbackx", id="longer-path"),
    pytest.param("https://beatlab.example/callback/../evil", id="dot-segments"),
    pytest.param("https://beatlab.example/callback%2F", id="encoded-slash"),
    pytest.param("https://beatlab.example/callback ", id="trailing-space"),
    pytest.param("//beatlab.example/callback", id="scheme-relative"),
    pytest.param("https://other.example/cb", id="another-apps-uri"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("redirect_uri", WEB_NEAR_MISSES)
@pytest.mark.parametrize("signed_in_first", [False, True], ids=["signed-out", "signed-in"])
def test_near_miss_redirect_uri_gets_an_error_page(flow: Flow, redirect_uri: str,
                                                   signed_in_first: bool) -> None:
    flow.world.new_app()  # registers https://other.example/cb for a different app
    if signed_in_first:
        flow.sign_in()
    response = flow.client.get(flow.authorize_url(redirect_uri=redirect_uri))
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "can't be connected" in response.text
    assert "not one registered" in response.text or "no redirect_uri" in response.text


@pytest.mark.parametrize("redirect_uri", [
    pytest.param("http://localhost:8719/callback", id="localhost-for-127"),
    pytest.param("http://127.0.0.1:8720/callback", id="other-loopback-port"),
    pytest.param("http://127.0.0.1/callback", id="no-port"),
    pytest.param("http://[::1]:8719/callback", id="ipv6-loopback"),
    pytest.param("https://127.0.0.1:8719/callback", id="https-instead"),
])
def test_desktop_loopback_uri_must_match_exactly(signed_in: Flow, redirect_uri: str) -> None:
    response = signed_in.client.get(signed_in.authorize_url(
        client_key=signed_in.desktop_key, redirect_uri=redirect_uri,
        code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        code_challenge_method="S256"))
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_a_duplicated_redirect_uri_is_refused_even_if_the_first_is_registered(
        signed_in: Flow) -> None:
    url = signed_in.authorize_url() + "&redirect_uri=https%3A%2F%2Fevil.example%2Fcb"
    response = signed_in.client.get(url)
    assert response.status_code == 400
    assert "Location" not in response.headers


@pytest.mark.parametrize("params", [
    pytest.param({"client_key": "sk0000000000000000"}, id="unknown-app"),
    pytest.param({"client_key": None}, id="missing-client-key"),
    pytest.param({"client_key": "x" * 5000}, id="huge-client-key"),
    pytest.param({"client_key": "sk\x00"}, id="nul-in-client-key"),
    pytest.param({"redirect_uri": None}, id="missing-redirect-uri"),
])
def test_unknown_app_or_missing_redirect_gets_an_error_page(signed_in: Flow,
                                                            params: dict[str, str]) -> None:
    response = signed_in.client.get(signed_in.authorize_url(**params))
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_client_id_is_accepted_as_the_standard_name_of_client_key(signed_in: Flow) -> None:
    got = signed_in.code(client_key=None, client_id=signed_in.web_key)  # type: ignore[arg-type]
    assert got["state"] == "st-123" and got["code"]


def test_client_key_and_a_different_client_id_together_are_refused(signed_in: Flow) -> None:
    other = signed_in.world.new_app().app.client_key
    response = signed_in.client.get(signed_in.authorize_url(client_id=other))
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_the_token_request_must_repeat_the_same_redirect_uri(signed_in: Flow) -> None:
    got = signed_in.code()
    refused = signed_in.exchange(got["code"], redirect_uri=WEB_REDIRECT + "/")
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "invalid_grant"
    missing = signed_in.client.post("/v2/oauth/token/", data={
        "grant_type": "authorization_code", "code": got["code"],
        "client_key": signed_in.web_key, "client_secret": signed_in.world.client_secret})
    assert missing.get_json()["error"] == "invalid_grant"
    assert signed_in.exchange(got["code"]).status_code == 200


def test_errors_after_the_redirect_uri_is_validated_go_back_to_the_app(signed_in: Flow) -> None:
    response = signed_in.client.get(signed_in.authorize_url(response_type="token"))
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(WEB_REDIRECT + "?")
    assert query(location) == {"error": "unsupported_response_type",
                               "error_description": "Only response_type=code is supported.",
                               "state": "st-123"}


@pytest.mark.parametrize(("uri", "public", "accepted"), [
    ("https://app.example/cb", False, True),
    ("https://app.example/cb", True, True),
    ("http://app.example/cb", False, False),
    ("http://127.0.0.1:8719/cb", True, True),
    ("http://localhost:8719/cb", True, True),
    ("http://[::1]:8719/cb", True, True),
    ("http://127.0.0.1/cb", True, False),
    ("http://192.168.1.5:8719/cb", True, False),
    ("https://app.example/cb#x", False, False),
    ("https://user:pw@app.example/cb", False, False),
    ("app.example/cb", False, False),
    ("myapp://callback", True, False),
])
def test_registration_rules_for_redirect_uris(uri: str, public: bool, accepted: bool) -> None:
    if accepted:
        assert accounts.check_redirect_uri(uri, public=public) == uri
    else:
        with pytest.raises(accounts.AccountError):
            accounts.check_redirect_uri(uri, public=public)


def test_desktop_app_with_its_exact_loopback_uri_connects(signed_in: Flow) -> None:
    tokens = signed_in.desktop_tokens()
    assert tokens["token_type"] == "Bearer"
    assert signed_in.api(tokens["access_token"]).status_code == 200
    assert DESKTOP_REDIRECT.startswith("http://127.0.0.1:")


@pytest.mark.parametrize(("response_type", "error"), [
    pytest.param('to"ken', "unsupported_response_type", id="quote"),
    pytest.param("tokén", "unsupported_response_type", id="non-ascii"),
    pytest.param("\\", "unsupported_response_type", id="backslash"),
    pytest.param("", "invalid_request", id="empty"),
    pytest.param(None, "invalid_request", id="missing"),
])
def test_bad_response_types_go_back_to_the_app_as_errors(
        signed_in: Flow, response_type: str | None, error: str) -> None:
    """Regression: Authlib turns the raw value into its error text and raises ValueError."""
    response = signed_in.client.get(signed_in.authorize_url(response_type=response_type))
    assert response.status_code == 302
    assert response.headers["Location"].startswith(WEB_REDIRECT + "?")
    assert query(response.headers["Location"])["error"] == error


@pytest.mark.parametrize("name", ["client_key", "client_id"])
def test_an_app_named_twice_gets_an_error_page(signed_in: Flow, name: str) -> None:
    url = signed_in.authorize_url(client_key=None, response_type=None,  # type: ignore[arg-type]
                                  redirect_uri=DESKTOP_REDIRECT)
    url += f"&{name}={signed_in.web_key}&{name}={signed_in.desktop_key}"
    response = signed_in.client.get(url)
    assert response.status_code == 400
    assert "Location" not in response.headers
