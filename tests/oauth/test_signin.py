"""Creator sign-in: password check, throttle, session cookie, CSRF, sign-out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from argon2 import PasswordHasher
from flask.testing import FlaskClient
from sqlalchemy import select

from api import create_app
from soundkit import accounts
from soundkit.models import User
from soundkit.settings import Settings
from tests.conftest import RecordingDispatcher
from tests.oauth.conftest import PASSWORD, Flow, csrf_token


def _form(client: FlaskClient) -> str:
    return csrf_token(client.get("/login").text)


def _attempt(flow: Flow, password: str, username: str = "alice",
             client: FlaskClient | None = None) -> int:
    """One sign-in from a fresh browser (a signed-in one would skip the form)."""
    client = client or flow.client.application.test_client()
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": _form(client)}).status_code


def test_right_password_signs_in_and_lands_on_the_library(flow: Flow) -> None:
    response = flow.sign_in()
    assert response.status_code == 302
    assert response.headers["Location"] == "/library"
    assert flow.client.get("/settings/apps").status_code == 200


@pytest.mark.parametrize(("username", "password"), [
    ("alice", "wrong password"),
    ("nobody", PASSWORD),
    ("ALICE ", "wrong password"),
])
def test_wrong_credentials_get_one_message(flow: Flow, username: str, password: str) -> None:
    page = flow.client.get("/login")
    response = flow.client.post("/login", data={"username": username, "password": password,
                                                "csrf_token": csrf_token(page.text)})
    assert response.status_code == 401
    assert "Wrong username or password." in response.text
    assert flow.client.get("/settings/apps").status_code == 302


def test_a_signed_in_creator_skips_the_login_page(signed_in: Flow) -> None:
    assert signed_in.client.get("/login").headers["Location"] == "/library"
    going = signed_in.client.get("/login?next=/v2/auth/authorize/%3Fx%3D1")
    assert going.headers["Location"] == "/v2/auth/authorize/?x=1"


def test_usernames_are_not_case_sensitive(flow: Flow) -> None:
    assert flow.sign_in(username="Alice").status_code == 302


def test_empty_or_nul_fields_are_refused(flow: Flow) -> None:
    assert _attempt(flow, "") == 400
    assert _attempt(flow, PASSWORD, username="ali\x00ce") == 400


def test_the_login_form_needs_its_csrf_token(flow: Flow) -> None:
    response = flow.client.post("/login", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 400
    assert flow.client.get("/settings/apps").status_code == 302


def test_five_failures_close_the_account_for_fifteen_minutes(flow: Flow) -> None:
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False):
        for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT):
            assert _attempt(flow, "guess") == 401
        page = flow.client.get("/login")
        throttled = flow.client.post("/login", data={
            "username": "alice", "password": PASSWORD, "csrf_token": csrf_token(page.text)})
        assert throttled.status_code == 429
        assert int(throttled.headers["Retry-After"]) == 15 * 60 + 1
        assert "Too many failed sign-ins" in throttled.text
        # From another browser too: the limit is on the account.
        other = flow.client.application.test_client()
        assert _attempt(flow, PASSWORD, client=other) == 429
    with time_machine.travel(start + timedelta(minutes=15, seconds=2), tick=False):
        assert _attempt(flow, PASSWORD) == 302


def test_success_resets_the_account_counter(flow: Flow) -> None:
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT - 1):
        assert _attempt(flow, "guess") == 401
    assert _attempt(flow, PASSWORD) == 302
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT - 1):
        assert _attempt(flow, "guess") == 401
    assert _attempt(flow, PASSWORD) == 302


def test_one_address_trying_many_accounts_is_throttled(flow: Flow) -> None:
    for n in range(accounts.MAX_FAILURES_PER_ADDRESS):
        assert _attempt(flow, "guess", username=f"user{n % 20}") == 401
    assert _attempt(flow, PASSWORD) == 429


def test_next_goes_back_to_a_local_page_only(flow: Flow) -> None:
    for target, expected in [("/v2/auth/authorize/?x=1", "/v2/auth/authorize/?x=1"),
                             ("//evil.example/", "/library"),
                             ("https://evil.example/", "/library"),
                             ("/\\evil.example", "/library"),
                             ("javascript:alert(1)", "/library")]:
        browser = flow.client.application.test_client()
        page = browser.get("/login")
        response = browser.post("/login", data={
            "username": "alice", "password": PASSWORD, "csrf_token": csrf_token(page.text),
            "next": target})
        assert response.headers["Location"] == expected, target


def test_session_cookie_is_http_only_and_same_site(flow: Flow) -> None:
    response = flow.sign_in()
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("soundkit_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # the test server's public URL is plain http on loopback


def test_session_cookie_is_secure_behind_https(make_settings: Callable[..., Settings],
                                               dispatcher: RecordingDispatcher,
                                               flow: Flow) -> None:
    app = create_app(make_settings(SOUNDKIT_PUBLIC_URL="https://soundkit.example"),
                     dispatcher=dispatcher)
    client = app.test_client()
    page = client.get("/login", base_url="https://soundkit.example")
    response = client.post("/login", base_url="https://soundkit.example", data={
        "username": "alice", "password": PASSWORD, "csrf_token": csrf_token(page.text)},
        headers={"Referer": "https://soundkit.example/login"})
    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"]


def test_sign_out_needs_a_post_with_csrf(signed_in: Flow) -> None:
    confirm = signed_in.client.get("/logout")
    assert confirm.status_code == 200 and "Sign out?" in confirm.text
    assert signed_in.client.post("/logout").status_code == 400
    assert signed_in.client.get("/settings/apps").status_code == 200
    done = signed_in.client.post("/logout", data={"csrf_token": csrf_token(confirm.text)})
    assert done.status_code == 302 and done.headers["Location"] == "/login"
    assert signed_in.client.get("/settings/apps").status_code == 302


def test_a_password_change_signs_other_browsers_out(signed_in: Flow) -> None:
    with signed_in.world.db.session() as session:
        user = session.scalar(select(User).where(User.username == "alice"))
        assert user is not None
        user.password_hash = accounts.hash_password("a brand new password")
    assert signed_in.client.get("/settings/apps").status_code == 302


def test_old_password_hashes_are_upgraded_on_sign_in(flow: Flow) -> None:
    with flow.world.db.session() as session:
        user = session.scalar(select(User).where(User.username == "alice"))
        assert user is not None
        user.password_hash = PasswordHasher(time_cost=1, memory_cost=512,
                                            parallelism=1).hash(PASSWORD)
        old = user.password_hash
    assert flow.sign_in().status_code == 302
    with flow.world.db.session() as session:
        user = session.scalar(select(User).where(User.username == "alice"))
        assert user is not None and user.password_hash != old
        assert "m=1024" in user.password_hash
        assert accounts.verify_password(user.password_hash, PASSWORD)


def test_pages_are_not_cached_and_not_framed(signed_in: Flow) -> None:
    response = signed_in.client.get("/settings/apps")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
