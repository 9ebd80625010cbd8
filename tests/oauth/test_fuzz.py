"""Property-based fuzzing of the authorization and token endpoints.

Invariants, whatever the parameters: never a 5xx; the authorization endpoint only
ever redirects to the sign-in page or to a redirect URI registered for the app the
request names; the token endpoint never redirects and always answers RFC 6749 JSON.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from soundkit.models import App
from tests.oauth.conftest import DESKTOP_REDIRECT, WEB_REDIRECT, Flow, csrf_token, new_verifier

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

junk = st.text(max_size=40)
uris = st.sampled_from([WEB_REDIRECT, DESKTOP_REDIRECT, WEB_REDIRECT + "/",
                        "https://evil.example/cb", "https://beatlab.example/callback?x=1",
                        "https://evil.example@beatlab.example/callback", "javascript:alert(1)",
                        "//evil.example", "http://127.0.0.1:8720/callback", ""]) | junk
scopes = st.lists(st.sampled_from(["user.info.basic", "sound.upload", "sound.list",
                                   "video.publish", "", "USER.INFO.BASIC"]), max_size=4).map(
    lambda xs: ",".join(xs)) | junk
methods = st.sampled_from(["S256", "plain", "s256", ""]) | junk
challenges = st.sampled_from(["E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "short"]) | junk


def _registered(flow: Flow) -> dict[str, list[str]]:
    with flow.world.db.session() as session:
        return {app.client_key: list(app.redirect_uris) for app in session.scalars(select(App))}


CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, str],
            candidates: dict[str, st.SearchStrategy[str]]) -> list[tuple[str, str]]:
    """A valid request with a few fields replaced, dropped, duplicated or added.

    Starting from a valid request reaches the deep paths (a known app, a registered
    URI, then a bad value) that independent random fields would almost never hit.
    """
    params: list[tuple[str, str]] = []
    for name, strategy in candidates.items():
        action = draw(st.sampled_from(["keep"] * 4 + ["replace", "drop", "twice"]))
        if name in valid and action in ("keep", "twice"):
            params.append((name, valid[name]))
        if action in ("replace", "twice"):
            params.append((name, draw(strategy)))
    return draw(st.permutations(params))


def authorize_params(registered: dict[str, list[str]]) -> st.SearchStrategy[
        list[tuple[str, str]]]:
    keys = sorted(registered)

    @st.composite
    def build(draw: st.DrawFn) -> list[tuple[str, str]]:
        key = draw(st.sampled_from(keys))
        valid = {"client_key": key, "response_type": "code",
                 "redirect_uri": registered[key][0], "scope": "user.info.basic,sound.list",
                 "state": "st", "code_challenge": CHALLENGE, "code_challenge_method": "S256"}
        candidates: dict[str, st.SearchStrategy[str]] = {
            "client_key": st.sampled_from(keys) | junk,
            "client_id": st.sampled_from(keys) | junk,
            "response_type": st.sampled_from(["token", "code token", ""]) | junk,
            "redirect_uri": st.sampled_from([u for us in registered.values() for u in us]) | uris,
            "scope": scopes,
            "state": junk,
            "code_challenge": challenges,
            "code_challenge_method": methods,
            "disable_auto_auth": st.sampled_from(["1", "0"]) | junk,
        }
        return draw(mutated(valid, candidates))

    return build()


def _check_authorize(flow: Flow, registered: dict[str, list[str]],
                     params: list[tuple[str, str]], method: str, csrf: str = "") -> None:
    url = "/v2/auth/authorize/?" + urlencode(params)
    form = {"decision": "authorize", "allow": ["user.info.basic", "sound.list"],
            "csrf_token": csrf}
    response = flow.client.open(url, method=method, data=form if method == "POST" else None)
    assert response.status_code < 500, (params, response.text[:500])
    if response.status_code not in (301, 302, 303, 307, 308):
        assert "Location" not in response.headers
        return
    location = response.headers["Location"]
    if location.startswith("/login"):
        return
    named = {v for k, v in params if k in ("client_key", "client_id")}
    given_uri = [v for k, v in params if k == "redirect_uri"]
    assert len(named) == 1 and len(given_uri) == 1, params
    (key,) = named
    assert given_uri[0] in registered.get(key, []), (params, location)
    assert location.startswith(given_uri[0] + "?"), (params, location)
    assert urlsplit(location).netloc == urlsplit(given_uri[0]).netloc


def test_authorize_never_fails_and_never_redirects_elsewhere_signed_out(flow: Flow) -> None:
    registered = _registered(flow)

    @FUZZ
    @given(params=authorize_params(registered))
    def run(params: list[tuple[str, str]]) -> None:
        _check_authorize(flow, registered, params, "GET")

    run()


def test_authorize_never_fails_and_never_redirects_elsewhere_signed_in(signed_in: Flow) -> None:
    signed_in.code()  # an existing consent makes automatic approval reachable
    registered = _registered(signed_in)
    csrf = csrf_token(signed_in.client.get("/logout").text)

    @FUZZ
    @given(params=authorize_params(registered),
           method=st.sampled_from(["GET", "GET", "POST"]))
    def run(params: list[tuple[str, str]], method: str) -> None:
        _check_authorize(signed_in, registered, params, method, csrf)

    run()


def test_token_endpoint_never_fails_and_never_redirects(signed_in: Flow) -> None:
    registered = _registered(signed_in)
    real_code = signed_in.code()["code"]
    real_refresh = signed_in.tokens(disable_auto_auth="1")["refresh_token"]
    secret = signed_in.world.client_secret or ""
    keys = list(registered)

    fields: dict[str, st.SearchStrategy[str]] = {
        "grant_type": st.sampled_from(["authorization_code", "refresh_token", "password",
                                       "client_credentials", ""]) | junk,
        "code": st.sampled_from([real_code, new_verifier()]) | junk,
        "refresh_token": st.sampled_from([real_refresh]) | junk,
        "redirect_uri": uris,
        "code_verifier": st.sampled_from([new_verifier(), "short"]) | junk,
        "client_key": st.sampled_from(keys) | junk,
        "client_id": st.sampled_from(keys) | junk,
        "client_secret": st.sampled_from([secret, "sks_wrong"]) | junk,
        "scope": scopes,
        "token": st.sampled_from([real_refresh]) | junk,
        "token_type_hint": st.sampled_from(["access_token", "refresh_token"]) | junk,
    }
    valid_code = {"grant_type": "authorization_code", "code": real_code,
                  "redirect_uri": WEB_REDIRECT, "client_key": signed_in.web_key,
                  "client_secret": secret}
    valid_refresh = {"grant_type": "refresh_token", "refresh_token": real_refresh,
                     "client_key": signed_in.web_key, "client_secret": secret}
    valid_token = {"token": real_refresh, "client_key": signed_in.web_key,
                   "client_secret": secret}

    def forms() -> st.SearchStrategy[list[tuple[str, str]]]:
        return st.sampled_from([valid_code, valid_refresh, valid_token]).flatmap(
            lambda valid: mutated(valid, fields))

    basic = st.none() | st.tuples(st.sampled_from(keys) | junk,
                                  st.sampled_from([secret]) | junk)

    @FUZZ
    @given(form=forms(), auth=basic,
           path=st.sampled_from(["/v2/oauth/token/", "/v2/oauth/token/", "/v2/oauth/revoke/",
                                 "/v2/oauth/introspect/"]))
    def run(form: list[tuple[str, str]], auth: tuple[str, str] | None, path: str) -> None:
        headers: dict[str, str] = {}
        if auth is not None:
            raw = f"{auth[0]}:{auth[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        response = signed_in.client.post(path, data=urlencode(form), headers=headers,
                                         content_type="application/x-www-form-urlencoded")
        assert response.status_code < 500, (form, response.text[:500])
        assert "Location" not in response.headers
        body: Any = response.get_json()
        assert isinstance(body, dict), response.text[:200]
        if response.status_code >= 400:
            assert isinstance(body.get("error"), str) and body["log_id"]

    run()
