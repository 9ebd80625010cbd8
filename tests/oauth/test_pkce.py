"""The PKCE matrix: S256 only, required of public apps, verified at the token endpoint."""

from __future__ import annotations

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from tests.oauth.conftest import DESKTOP_REDIRECT, WEB_REDIRECT, Flow, new_verifier, query

VERIFIER = "dBjftJeZ4CVP-mJ92K27uhbUJU1p1r_wW1gFWFOEjXk-and-some-more-entropy"
CHALLENGE = create_s256_code_challenge(VERIFIER)


@pytest.mark.parametrize(("params", "description"), [
    pytest.param({}, "PKCE is required", id="missing"),
    pytest.param({"code_challenge": VERIFIER, "code_challenge_method": "plain"},
                 "only S256", id="plain"),
    pytest.param({"code_challenge": CHALLENGE}, "only S256", id="method-missing"),
    pytest.param({"code_challenge_method": "S256"}, "Missing 'code_challenge'",
                 id="challenge-missing"),
    pytest.param({"code_challenge": CHALLENGE, "code_challenge_method": "s256"},
                 "only S256", id="method-lowercase"),
    pytest.param({"code_challenge": "short", "code_challenge_method": "S256"},
                 "Invalid 'code_challenge'", id="challenge-malformed"),
])
def test_public_app_authorization_refuses_anything_but_s256(
        signed_in: Flow, params: dict[str, str], description: str) -> None:
    response = signed_in.client.get(signed_in.authorize_url(
        client_key=signed_in.desktop_key, redirect_uri=DESKTOP_REDIRECT, **params))
    assert response.status_code == 302
    assert response.headers["Location"].startswith(DESKTOP_REDIRECT + "?")
    got = query(response.headers["Location"])
    assert got["error"] == "invalid_request"
    assert description in got["error_description"]
    assert got["state"] == "st-123"
    assert "code" not in got


def test_confidential_app_may_not_use_plain_either(signed_in: Flow) -> None:
    response = signed_in.client.get(signed_in.authorize_url(
        code_challenge=VERIFIER, code_challenge_method="plain"))
    assert query(response.headers["Location"])["error"] == "invalid_request"


def _desktop_code(flow: Flow, challenge: str = CHALLENGE) -> str:
    return flow.code(client_key=flow.desktop_key, redirect_uri=DESKTOP_REDIRECT,
                     code_challenge=challenge, code_challenge_method="S256")["code"]


@pytest.mark.parametrize(("verifier", "status", "error"), [
    pytest.param(None, 400, "invalid_request", id="verifier-missing"),
    pytest.param(new_verifier(), 400, "invalid_grant", id="verifier-wrong"),
    pytest.param(CHALLENGE, 400, "invalid_grant", id="challenge-sent-as-verifier"),
    pytest.param("too-short", 400, "invalid_request", id="verifier-malformed"),
    pytest.param(VERIFIER, 200, None, id="verifier-right"),
])
def test_public_app_token_request_needs_the_matching_verifier(
        signed_in: Flow, verifier: str | None, status: int, error: str | None) -> None:
    code = _desktop_code(signed_in)
    response = signed_in.exchange(code, verifier=verifier, client_key=signed_in.desktop_key,
                                  redirect_uri=DESKTOP_REDIRECT)
    assert response.status_code == status, response.text
    assert response.get_json().get("error") == error
    if status == 200:
        assert signed_in.api(response.get_json()["access_token"]).status_code == 200


def test_a_failed_verifier_does_not_burn_the_code_for_its_rightful_owner(
        signed_in: Flow) -> None:
    code = _desktop_code(signed_in)
    wrong = signed_in.exchange(code, verifier=new_verifier(), client_key=signed_in.desktop_key,
                               redirect_uri=DESKTOP_REDIRECT)
    assert wrong.get_json()["error"] == "invalid_grant"
    right = signed_in.exchange(code, verifier=VERIFIER, client_key=signed_in.desktop_key,
                               redirect_uri=DESKTOP_REDIRECT)
    assert right.status_code == 200


@pytest.mark.parametrize(("with_challenge", "verifier", "status", "error"), [
    pytest.param(False, None, 200, None, id="no-pkce"),
    pytest.param(False, VERIFIER, 400, "invalid_request", id="verifier-without-challenge"),
    pytest.param(True, None, 400, "invalid_request", id="challenge-without-verifier"),
    pytest.param(True, new_verifier(), 400, "invalid_grant", id="wrong-verifier"),
    pytest.param(True, VERIFIER, 200, None, id="s256"),
])
def test_confidential_app_matrix(signed_in: Flow, with_challenge: bool, verifier: str | None,
                                 status: int, error: str | None) -> None:
    extra = {"code_challenge": CHALLENGE, "code_challenge_method": "S256"} \
        if with_challenge else {}
    code = signed_in.code(**extra)["code"]
    response = signed_in.exchange(code, verifier=verifier)
    assert response.status_code == status, response.text
    assert response.get_json().get("error") == error


def test_public_app_cannot_authenticate_with_a_made_up_secret(signed_in: Flow) -> None:
    code = _desktop_code(signed_in)
    response = signed_in.exchange(code, verifier=VERIFIER, client_key=signed_in.desktop_key,
                                  redirect_uri=DESKTOP_REDIRECT, secret="guessed")
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_confidential_app_cannot_skip_its_secret_by_using_pkce(signed_in: Flow) -> None:
    code = signed_in.code(code_challenge=CHALLENGE, code_challenge_method="S256")["code"]
    response = signed_in.exchange(code, verifier=VERIFIER, secret="")
    assert response.status_code in (400, 401)
    assert response.get_json()["error"] == "invalid_client"
    wrong = signed_in.exchange(code, verifier=VERIFIER, secret="sks_wrong", basic=True)
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"].startswith("Basic ")
    assert signed_in.exchange(code, verifier=VERIFIER, basic=True).status_code == 200


def test_code_issued_to_one_app_cannot_be_exchanged_by_another(signed_in: Flow) -> None:
    code = signed_in.code(code_challenge=CHALLENGE, code_challenge_method="S256")["code"]
    response = signed_in.exchange(code, verifier=VERIFIER, client_key=signed_in.desktop_key,
                                  redirect_uri=WEB_REDIRECT)
    assert response.get_json()["error"] == "invalid_grant"
    assert signed_in.exchange(code, verifier=VERIFIER).status_code == 200
