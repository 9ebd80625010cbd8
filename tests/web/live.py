"""A whole Soundkit on loopback for browser tests: the api over HTTP, a real worker, Chromium.

The api runs in a thread of the test process (werkzeug's threaded server) with the real
dispatcher; the worker is ``celery -A worker.app worker`` in its own process, started
when a test asks for it (so a test can first see a job waiting). Both use the embedded
defaults under one temporary directory: SQLite, the filesystem broker, the local store
whose signed ``/media/`` URLs the api serves with HTTP Range.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from playwright.sync_api import Browser, Page, sync_playwright
from werkzeug.serving import make_server

from api import create_app
from soundkit import accounts
from soundkit.db import Database
from soundkit.models import Upload
from soundkit.settings import Settings, load_settings
from soundkit.storage import LocalStore
from tests.conftest import SECRET, World, build_world
from tests.integration.stack import WorkerProcess, free_port, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"
#: ``SOUNDKIT_SCREENSHOTS=docs/screenshots pytest -m browser`` refreshes the README's images.
SCREENSHOT_DIR = os.environ.get("SOUNDKIT_SCREENSHOTS")


@dataclass
class LiveStack:
    settings: Settings
    env: dict[str, str]
    app: Flask
    url: str
    db: Database
    world: World
    var_dir: Path
    worker: WorkerProcess | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> LocalStore:
        store = self.app.extensions["soundkit"].store
        assert isinstance(store, LocalStore)
        return store

    def start_worker(self) -> WorkerProcess:
        if self.worker is None:
            self.worker = WorkerProcess(self.env, self.var_dir / "worker.log")
            self.worker.wait_ready()
        return self.worker

    def push(self, path: Path, title: str, token: str | None = None) -> tuple[str, str]:
        """An app uploads over HTTP; returns the upload id and the request's log id."""
        response = requests.post(
            f"{self.url}/v2/sound/upload/", timeout=30,
            headers={"Authorization": f"Bearer {token or self.world.token()}"},
            files={"sound_file": (path.name, io.BytesIO(path.read_bytes()))},
            data={"title": title})
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["error"]["log_id"] == response.headers["X-Request-Id"]
        return body["data"]["upload_id"], response.headers["X-Request-Id"]

    def upload(self, upload_id: str) -> Upload:
        with self.db.session() as session:
            found = session.get(Upload, upload_id)
            assert found is not None
            return found

    def wait_status(self, upload_id: str, status: str, timeout: float = 90) -> Upload:
        def reached() -> Upload | None:
            upload = self.upload(upload_id)
            return upload if upload.status == status else None

        try:
            found: Upload = wait_for(reached, timeout, f"{upload_id} to be {status}")
        except AssertionError:
            if self.worker is not None:
                print(self.worker.output()[-4000:])
            raise
        return found


@contextmanager
def live_stack(var_dir: Path, sqlite_template: Path, *, webhook_url: str | None = None,
               **extra_env: str) -> Iterator[LiveStack]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    var_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sqlite_template, var_dir / "soundkit.db")
    env = {"SOUNDKIT_VAR_DIR": str(var_dir), "SOUNDKIT_SECRET_KEY": SECRET,
           "SOUNDKIT_PUBLIC_URL": url, "SOUNDKIT_RECONCILE_INTERVAL_S": "1",
           "SOUNDKIT_WAKEUP_GRACE_S": "2", **extra_env}
    settings = load_settings(env)
    db = Database(settings.database_url)
    world = build_world(db, settings, webhook_url=webhook_url)
    with db.session() as session:
        accounts.create_user(session, "olga", PASSWORD, "Olga Operator", operator=True)
    app = create_app(settings)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stack = LiveStack(settings, env, app, url, db, world, var_dir)
    try:
        yield stack
    finally:
        if stack.worker is not None:  # nothing left to finish: no need for a warm shutdown
            stack.worker.kill()
            stack.worker.stop()
        server.shutdown()
        server.server_close()
        thread.join(10)
        app.extensions["soundkit"].db.dispose()
        db.dispose()


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Page, url: str, username: str) -> None:
    """Through the real sign-in form, by keyboard."""
    page.goto(f"{url}/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")
    page.wait_for_url(re.compile(r".*/(library|ops|settings/apps)$"))


def fits_a_phone(page: Page) -> bool:
    """Nothing wider than the viewport: the page never scrolls sideways."""
    width: bool = page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth + 1")
    return width


def screenshot(page: Page, name: str, fallback: Path) -> Path:
    """Into ``SOUNDKIT_SCREENSHOTS`` when set (the README's images), else the test's tmp."""
    folder = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else fallback
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    return target
