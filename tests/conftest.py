"""Shared fixtures: real databases, real brokers, real ffmpeg.

Services are never skipped: a test that needs PostgreSQL, Redis or ffmpeg fails
with a message saying what is missing. Every test gets its own data directory,
SQLite file and object directory; PostgreSQL tests share one throw-away database
per session, emptied after each test.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from soundkit import accounts, migrate
from soundkit.db import Database, scratch_postgres_database
from soundkit.models import Base, User
from soundkit.queue import Dispatcher
from soundkit.settings import Settings, load_settings
from soundkit.storage import LocalStore

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/9"
SECRET = "test-secret-key-that-is-long-enough-0123456789"


def require_port(host: str, port: int, what: str) -> None:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as error:
        pytest.fail(f"{what} is not reachable on {host}:{port} ({error}); the integration "
                    f"suite needs it running", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _ffmpeg_present() -> None:
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; `make test` installs it", pytrace=False)


# --- SQLite: one migrated template per session, copied per test ----------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "soundkit.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path


@pytest.fixture
def make_settings(var_dir: Path, sqlite_template: Path) -> Callable[..., Settings]:
    """Settings for a test: embedded defaults under tmp, overridable per variable."""

    def build(**env: str) -> Settings:
        base = {"SOUNDKIT_VAR_DIR": str(var_dir), "SOUNDKIT_SECRET_KEY": SECRET,
                "SOUNDKIT_RECONCILE_INTERVAL_S": "1", "SOUNDKIT_WAKEUP_GRACE_S": "2"}
        if "DATABASE_URL" not in env:
            db_file = var_dir / "soundkit.db"
            if not db_file.exists():
                shutil.copyfile(sqlite_template, db_file)
            base["DATABASE_URL"] = f"sqlite:///{db_file}"
        base.update(env)
        return load_settings(base)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url)
    yield database
    database.dispose()


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped afterwards."""
    require_port("127.0.0.1", 5432, "PostgreSQL")
    with scratch_postgres_database(PG_ADMIN_URL, "soundkit_test") as url:
        migrate.upgrade(url)
        yield url


def truncate_all(url: str) -> None:
    engine = sa.create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def pg_db_url(pg_url: str) -> Iterator[str]:
    """The session's PostgreSQL database, emptied after the test."""
    yield pg_url
    truncate_all(pg_url)


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis database 9, flushed before and after the test."""
    import redis

    require_port("127.0.0.1", 6379, "Redis")
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


# --- S3 through moto's server mode ----------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free local port, reachable from other processes."""
    from moto.server import ThreadedMotoServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# --- The api with a recording dispatcher ------------------------------------------------------


class RecordingDispatcher(Dispatcher):
    """Records wake-ups instead of talking to a broker (API tests run no worker)."""

    def __init__(self) -> None:
        self.uploads: list[str] = []
        self.webhooks: list[int] = []

    def wake_upload(self, upload_id: str, log_id: str | None = None) -> bool:
        self.uploads.append(upload_id)
        return True

    def wake_webhook(self, delivery_id: int) -> bool:
        self.webhooks.append(delivery_id)
        return True


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def app(settings: Settings, dispatcher: RecordingDispatcher) -> Flask:
    from api import create_app

    flask_app = create_app(settings, dispatcher=dispatcher)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(app: Flask) -> LocalStore:
    found = app.extensions["soundkit"].store
    assert isinstance(found, LocalStore)
    return found


# --- Accounts -----------------------------------------------------------------------------------


@dataclass
class World:
    """A creator, an app and helpers to mint tokens for them."""

    db: Database
    settings: Settings
    creator: User
    client_key: str
    client_secret: str | None
    webhook_secret: str
    extra: dict[str, Any] = field(default_factory=dict)

    def token(self, scopes: str = "user.info.basic,sound.upload,sound.list",
              username: str | None = None, client_key: str | None = None) -> str:
        with self.db.session() as session:
            raw, _ = accounts.issue_operator_token(
                session, username=username or self.creator.username,
                client_key=client_key or self.client_key,
                scopes=accounts.parse_scopes(scopes), actor="test")
        return raw

    def new_app(self, name: str = "Other App", developer: str = "Other Dev",
                webhook_url: str | None = None) -> accounts.NewApp:
        with self.db.session() as session:
            return accounts.create_app(
                session, name=name, redirect_uris=["https://other.example/cb"],
                developer=developer, secret_key=self.settings.secret_key,
                webhook_url=webhook_url)

    def new_creator(self, username: str, password: str = "correct horse battery") -> User:
        with self.db.session() as session:
            return accounts.create_user(session, username, password)


def build_world(db: Database, settings: Settings, webhook_url: str | None = None) -> World:
    with db.session() as session:
        creator = accounts.create_user(session, "alice", "correct horse battery", "Alice A.")
        created = accounts.create_app(
            session, name="Beat Lab", redirect_uris=["https://beatlab.example/callback"],
            developer="Beat Lab Inc", secret_key=settings.secret_key, webhook_url=webhook_url)
    return World(db, settings, creator, created.app.client_key, created.client_secret,
                 created.webhook_secret)


@pytest.fixture
def world(db: Database, settings: Settings) -> World:
    return build_world(db, settings)
