"""Login Kit test helpers: a creator signing in and consenting through the real pages.

Everything goes through the Flask test client and a real (SQLite or PostgreSQL)
database; the only shortcut is cheap Argon2 parameters, so a sign-in costs
milliseconds instead of the production hash's tenth of a second.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from argon2 import PasswordHasher
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from soundkit import accounts
from soundkit.db import Database
from soundkit.settings import Settings
from tests.conftest import World

PASSWORD = "correct horse battery"
WEB_REDIRECT = "https://beatlab.example/callback"
DESKTOP_REDIRECT = "http://127.0.0.1:8719/callback"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(autouse=True)
def cheap_argon2() -> Iterator[None]:
    previous = accounts.use_password_hasher(
        PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    yield
    accounts.use_password_hasher(previous)


def csrf_token(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


@dataclass
class Flow:
    """One browser (a test client with cookies) and the apps it connects."""

    client: FlaskClient
    world: World
    desktop_key: str

    @property
    def web_key(self) -> str:
        return self.world.client_key

    def sign_in(self, username: str = "alice", password: str = PASSWORD) -> TestResponse:
        page = self.client.get("/login")
        return self.client.post("/login", data={"username": username, "password": password,
                                                "csrf_token": csrf_token(page.text)})

    def authorize_url(self, **params: str) -> str:
        base = {"client_key": self.web_key, "response_type": "code",
                "scope": "user.info.basic,sound.upload,sound.list",
                "redirect_uri": WEB_REDIRECT, "state": "st-123"}
        base.update(params)
        return "/v2/auth/authorize/?" + urlencode({k: v for k, v in base.items() if v is not None})

    def decide(self, url: str, decision: str = "authorize",
               allow: list[str] | None = None) -> TestResponse:
        """Open the consent page and submit it as a browser would (toggles as given)."""
        page = self.client.get(url)
        assert page.status_code == 200, page.text
        if allow is None:
            allow = re.findall(r'name="allow" value="([^"]+)"', page.text)
        form: dict[str, Any] = {"csrf_token": csrf_token(page.text), "decision": decision,
                                "allow": allow}
        return self.client.post(url, data=form)

    def code(self, allow: list[str] | None = None, **params: str) -> dict[str, str]:
        """Sign-in must have happened; returns the redirect's query (code, scopes, state)."""
        response = self.decide(self.authorize_url(**params), allow=allow)
        assert response.status_code == 302, response.text
        return query(response.headers["Location"])

    def exchange(self, code: str, *, verifier: str | None = None,
                 redirect_uri: str = WEB_REDIRECT, client_key: str | None = None,
                 secret: str | None = None, basic: bool = False) -> TestResponse:
        key = client_key or self.web_key
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if verifier:
            form["code_verifier"] = verifier
        secret = secret if secret is not None else (
            self.world.client_secret if key == self.web_key else None)
        headers = {}
        if basic and secret:
            import base64

            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{key}:{secret}".encode()).decode()
        else:
            form["client_key"] = key
            if secret:
                form["client_secret"] = secret
        return self.client.post("/v2/oauth/token/", data=form, headers=headers)

    def tokens(self, allow: list[str] | None = None, **params: str) -> dict[str, Any]:
        """The whole web-app flow: code, then tokens."""
        got = self.code(allow=allow, **params)
        response = self.exchange(got["code"])
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.get_json()
        return body

    def desktop_tokens(self) -> dict[str, Any]:
        verifier = new_verifier()
        got = self.code(client_key=self.desktop_key, redirect_uri=DESKTOP_REDIRECT,
                        code_challenge=create_s256_code_challenge(verifier),
                        code_challenge_method="S256")
        response = self.exchange(got["code"], verifier=verifier, client_key=self.desktop_key,
                                 redirect_uri=DESKTOP_REDIRECT)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.get_json()
        return body

    def refresh(self, refresh_token: str, client_key: str | None = None,
                secret: str | None = None) -> TestResponse:
        key = client_key or self.web_key
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_key": key}
        secret = secret if secret is not None else (
            self.world.client_secret if key == self.web_key else None)
        if secret:
            form["client_secret"] = secret
        return self.client.post("/v2/oauth/token/", data=form)

    def api(self, token: str, path: str = "/v2/user/info/") -> TestResponse:
        return self.client.get(path, headers={"Authorization": f"Bearer {token}"})


def add_desktop_app(db: Database, settings: Settings, name: str = "Pocket Studio",
                    developer: str = "Beat Lab Inc") -> str:
    with db.session() as session:
        created = accounts.create_app(session, name=name, redirect_uris=[DESKTOP_REDIRECT],
                                      developer=developer, secret_key=settings.secret_key,
                                      public=True)
        return created.app.client_key


@pytest.fixture
def flow(client: FlaskClient, world: World, db: Database, settings: Settings) -> Flow:
    return Flow(client, world, add_desktop_app(db, settings))


@pytest.fixture
def signed_in(flow: Flow) -> Flow:
    response = flow.sign_in()
    assert response.status_code == 302, response.text
    return flow
