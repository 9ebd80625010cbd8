"""``soundkit run``: migrate, seed the demo, and supervise api + worker + beat.

Everything runs in the foreground on the current settings (the embedded defaults
unless the environment says otherwise). Ctrl-C stops every process this started,
and if one of them dies the others are stopped too, so the terminal never shows a
half-running system.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select

from soundkit import accounts, migrate
from soundkit.db import Database
from soundkit.models import App, Token, User
from soundkit.security import hash_token
from soundkit.settings import Settings

DEMO_USER = "demo"
DEMO_APP = "Demo Beat Maker"
DEMO_DESKTOP_APP = "Demo Desktop Recorder"
DEMO_DEVELOPER = "Soundkit Demo Studio"
#: Where ``soundkit login`` listens by default (a desktop app's loopback redirect).
DEMO_DESKTOP_REDIRECT = "http://127.0.0.1:8719/callback"


def demo_redirect_uri(settings: Settings) -> str:
    return f"{settings.public_url}/demo/callback"


def _load(path: Path) -> dict[str, Any]:
    if path.exists():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    return {}


def _token_valid(db: Database, raw: str | None) -> bool:
    if not raw:
        return False
    with db.session() as session:
        token = session.scalar(select(Token).where(Token.access_token_hash == hash_token(raw)))
        return token is not None and token.is_active()


def seed_demo(settings: Settings) -> dict[str, Any]:
    """Create (once) the demo creator, app and an all-scopes token; write var/demo.json."""
    path = settings.var_dir / "demo.json"
    demo = _load(path)
    db = Database(settings.database_url)
    with db.session() as session:
        if session.scalar(select(User).where(User.username == DEMO_USER)) is None:
            demo["password"] = secrets.token_urlsafe(12)
            accounts.create_user(session, DEMO_USER, demo["password"], "Demo Creator")
        app = session.scalar(select(App).where(App.name == DEMO_APP))
        if app is None or app.client_key != demo.get("client_key"):
            created = accounts.create_app(
                session, name=DEMO_APP, redirect_uris=[demo_redirect_uri(settings)],
                developer=DEMO_DEVELOPER, secret_key=settings.secret_key)
            demo.update(client_key=created.app.client_key, client_secret=created.client_secret,
                        webhook_secret=created.webhook_secret)
        elif app.redirect_uris != [demo_redirect_uri(settings)]:  # SOUNDKIT_BIND changed
            app.redirect_uris = [demo_redirect_uri(settings)]
        desktop = session.scalar(select(App).where(App.name == DEMO_DESKTOP_APP))
        if desktop is None or desktop.client_key != demo.get("desktop_client_key"):
            created = accounts.create_app(
                session, name=DEMO_DESKTOP_APP, redirect_uris=[DEMO_DESKTOP_REDIRECT],
                developer=DEMO_DEVELOPER, secret_key=settings.secret_key, public=True)
            demo.update(desktop_client_key=created.app.client_key)
    if not _token_valid(db, demo.get("access_token")):
        with db.session() as session:
            raw, _ = accounts.issue_operator_token(
                session, username=DEMO_USER, client_key=demo["client_key"],
                scopes=list(accounts.SCOPES), actor="make run")
        demo["access_token"] = raw
    db.dispose()
    demo.update(api_url=settings.public_url, username=DEMO_USER,
                redirect_uri=demo_redirect_uri(settings),
                desktop_redirect_uri=DEMO_DESKTOP_REDIRECT)
    path.write_text(json.dumps(demo, indent=2) + "\n")
    path.chmod(0o600)
    return demo


def commands(settings: Settings) -> dict[str, list[str]]:
    python = sys.executable
    queues = "ingest,webhooks,maintenance"
    return {
        "api": [python, "-m", "gunicorn", "--bind", settings.bind, "--workers", "2",
                "--threads", "4", "--timeout", "600", "--access-logfile", "-", "api.wsgi:app"],
        "worker": [python, "-m", "celery", "-A", "worker.app", "worker", "-Q", queues,
                   "-c", str(settings.worker_concurrency), "-n", "worker@%h",
                   "--loglevel", settings.log_level],
        "beat": [python, "-m", "celery", "-A", "worker.app", "beat",
                 "--loglevel", settings.log_level],
    }


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in processes.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in processes.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _banner(settings: Settings, demo: dict[str, Any]) -> str:
    return "\n".join([
        "",
        "Soundkit is starting:",
        f"  api           {settings.public_url}/  (health: {settings.public_url}/healthz)",
        f"  sign in       {settings.public_url}/login   user {demo['username']}, "
        f"password in {settings.var_dir / 'demo.json'}",
        f"  demo app      client_key {demo['client_key']}",
        f"  connect       {settings.public_url}/v2/auth/authorize/?" + urlencode(
            {"client_key": demo["client_key"], "response_type": "code",
             "scope": "user.info.basic,sound.upload,sound.list",
             "redirect_uri": demo["redirect_uri"], "state": "demo"}),
        "",
        "Connect a desktop app from the terminal (browser sign-in, PKCE on loopback):",
        f"  .venv/bin/soundkit login --app {demo['desktop_client_key']} "
        f"--api {settings.public_url}",
        "",
        "Push a sound:",
        f"  .venv/bin/soundkit push path/to/track.mp3 --token {demo['access_token']} "
        f"--api {settings.public_url}",
        "",
        "Ctrl-C stops everything.",
        "",
    ])


def main(settings: Settings) -> None:
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.database_url)
    demo = seed_demo(settings)
    print(_banner(settings, demo), flush=True)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for name, argv in commands(settings).items():
            processes[name] = subprocess.Popen(argv, start_new_session=True)
        while not stopping:
            for name, proc in processes.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", flush=True)
                    stopping = True
            time.sleep(0.5)
    finally:
        _stop(processes)
