"""Library and operator-console test helpers: signed-in browsers and real sounds.

A "browser" here is a Flask test client with its own cookie jar that signed in through
the real ``/login`` form. Ready sounds are made the way production makes them: pushed
through ``/v2/sound/upload/`` and ingested by the worker's own code (real ffmpeg) in
this process, so their objects, waveform and loudness are real.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from soundkit import accounts
from soundkit.db import Database
from soundkit.settings import Settings
from soundkit.storage import LocalStore
from tests.audio import make_audio
from tests.conftest import RecordingDispatcher, World
from worker import ingest
from worker.runtime import Runtime

PASSWORD = "correct horse battery"
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


def session_csrf(client: FlaskClient) -> str:
    """The session's CSRF token, from a page that always has a form (sign out)."""
    return csrf_token(client.get("/logout").text)


def sign_in(client: FlaskClient, username: str, password: str = PASSWORD) -> FlaskClient:
    page = client.get("/login")
    response = client.post("/login", data={"username": username, "password": password,
                                           "csrf_token": csrf_token(page.text)})
    assert response.status_code == 302, response.text
    return client


@dataclass
class People:
    """The creator alice (with the app Beat Lab), a second creator, and an operator."""

    world: World
    app: Flask
    operator: str = "olga"
    other: str = "bob"

    def browser(self, username: str | None = None) -> FlaskClient:
        client = self.app.test_client()
        return sign_in(client, username) if username else client

    def creator(self) -> FlaskClient:
        return self.browser(self.world.creator.username)

    def ops(self) -> FlaskClient:
        return self.browser(self.operator)


@pytest.fixture
def people(app: Flask, world: World, db: Database) -> People:
    with db.session() as session:
        accounts.create_user(session, "olga", PASSWORD, "Olga Operator", operator=True)
        accounts.create_user(session, "bob", PASSWORD, "Bob B.")
    return People(world, app)


def push(app: Flask, token: str, path: Path, title: str | None = None) -> str:
    """What an app does: upload the file with the creator's token; returns the upload id."""
    data: dict[str, Any] = {"sound_file": (io.BytesIO(path.read_bytes()), path.name)}
    if title:
        data["title"] = title
    response = app.test_client().post("/v2/sound/upload/", data=data,
                                      headers={"Authorization": f"Bearer {token}"},
                                      content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    upload_id: str = response.get_json()["data"]["upload_id"]
    return upload_id


def run_worker(app: Flask, settings: Settings, upload_id: str) -> str:
    """The worker's ingest for one job, in this process, against the app's store."""
    svc = app.extensions["soundkit"]
    rt = Runtime(settings=settings, db=svc.db, store=svc.store,
                 dispatcher=RecordingDispatcher())
    return ingest.run(rt, upload_id)


@pytest.fixture(scope="session")
def track(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_audio(tmp_path_factory.mktemp("web") / "night drive.mp3", 6.0)


@pytest.fixture
def store(app: Flask) -> LocalStore:
    found = app.extensions["soundkit"].store
    assert isinstance(found, LocalStore)
    return found
