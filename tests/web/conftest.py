"""Library and operator-console test helpers: signed-in browsers and real sounds.

A "browser" here is a Flask test client with its own cookie jar that signed in through
the real ``/login`` form. Ready sounds are made the way production makes them: pushed
through ``/v2/sound/upload/`` and ingested by the worker's own code (real ffmpeg) in
this process, so their objects, waveform and loudness are real.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from soundkit import accounts, jobs, webhooks
from soundkit.db import Database
from soundkit.models import WebhookDelivery, utcnow
from soundkit.settings import Settings
from soundkit.storage import LocalStore
from tests.conftest import RecordingDispatcher, World
from tests.web.tunes import make_tune
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
    return make_tune(tmp_path_factory.mktemp("web") / "night drive.mp3", 6.0, seed=1)


@pytest.fixture
def store(app: Flask) -> LocalStore:
    found = app.extensions["soundkit"].store
    assert isinstance(found, LocalStore)
    return found


@dataclass
class Console:
    """Jobs in every state the console reports."""

    ready: str
    refused: str
    internal: str
    waiting: str
    running: str
    hooked: str
    delivery: int


@pytest.fixture
def console(people: People, settings: Settings, make_settings: Callable[..., Settings],
            track: Path, tmp_path: Path, db: Database, store: LocalStore) -> Console:
    world, app = people.world, people.app
    token = world.token()
    ready = push(app, token, track, "Night Drive")
    assert run_worker(app, settings, ready) == "done"

    notes = tmp_path / "notes.mp3"
    notes.write_bytes(b"not audio at all\n" * 500)
    refused = push(app, token, notes, "Notes")
    assert run_worker(app, settings, refused) == "done"

    internal = push(app, token, make_tune(tmp_path / "lost.wav", 5.5, seed=11), "Lost")
    (store.path(f"incoming/{internal}")).rename(tmp_path / "lost.bytes")  # the bytes vanish
    assert run_worker(app, make_settings(SOUNDKIT_MAX_ATTEMPTS="1"), internal) == "failed"
    (tmp_path / "lost.bytes").rename(store.path(f"incoming/{internal}"))  # ...and come back

    waiting = push(app, token, make_tune(tmp_path / "wait.wav", 5.5, seed=12), "Waiting")
    running = push(app, token, make_tune(tmp_path / "run.wav", 5.5, seed=13), "Running")
    with db.session() as session:  # a worker holds it, and its lease has already run out
        assert jobs.claim(session, running, "gone-worker:42", 1,
                          now=utcnow() - timedelta(minutes=5)) is not None

    hooked_app = world.new_app("Hook Lab", "Hook Lab Inc", webhook_url="http://127.0.0.1:9/hook")
    hooked = push(app, world.token(client_key=hooked_app.app.client_key),
                  tmp_path / "notes.mp3", "Hooked notes")
    assert run_worker(app, settings, hooked) == "done"
    with db.session() as session:
        delivery = session.scalars(select(WebhookDelivery.id)).one()
    with db.session() as session:  # nothing listens on port 9: a real connection failure
        assert webhooks.deliver(session, delivery, secret_key=settings.secret_key,
                                timeout_s=2, max_age_s=3600) == "pending"
    return Console(ready, refused, internal, waiting, running, hooked, delivery)
