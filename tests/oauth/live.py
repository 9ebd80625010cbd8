"""The api served over real HTTP from a thread, for clients that are not the test client."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html import unescape
from typing import Any
from urllib.parse import urljoin

import requests
from flask import Flask
from werkzeug.serving import make_server

from api import create_app
from soundkit import accounts
from soundkit.db import Database
from soundkit.settings import Settings
from tests.conftest import RecordingDispatcher, build_world


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@contextmanager
def serve(app: Flask, port: int) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1:``port`` (threaded) until the block ends."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def serve_with_web_app(make_settings: Callable[..., Settings], dispatcher: RecordingDispatcher,
                       *, name: str, developer: str) -> Iterator[dict[str, Any]]:
    """The api over HTTP with the creator alice and one web app whose redirect URI is the
    bundled reference client page; yields ``api``, ``client_key``, ``client_secret`` and
    ``redirect_uri``."""
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    settings = make_settings(SOUNDKIT_PUBLIC_URL=api)
    app = create_app(settings, dispatcher=dispatcher)
    db = Database(settings.database_url)
    build_world(db, settings)  # the creator alice (and an unrelated app)
    with db.session() as session:
        created = accounts.create_app(session, name=name, developer=developer,
                                      redirect_uris=[f"{api}/demo/callback"],
                                      secret_key=settings.secret_key)
    try:
        with serve(app, port) as url:
            yield {"api": url, "client_key": created.app.client_key,
                   "client_secret": created.client_secret,
                   "redirect_uri": f"{api}/demo/callback"}
    finally:
        db.dispose()
        app.extensions["soundkit"].db.dispose()


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field"
    return unescape(found.group(1))


def browse_and_consent(url: str, username: str, password: str, *,
                       decision: str = "authorize", allow: list[str] | None = None) -> str:
    """What a creator's browser does: sign in, submit the consent form, follow redirects.

    Returns the URL the browser ended on (the app's redirect URI, with the code).
    """
    with requests.Session() as browser:
        page = browser.get(url, timeout=10)
        if "/login" in page.url:
            page = browser.post(page.url.split("?")[0], timeout=10, data={
                "username": username, "password": password,
                "csrf_token": _field(page.text, "csrf_token"),
                "next": _field(page.text, "next")})
        assert 'value="authorize"' in page.text, page.text[page.text.find("<main"):][:800]
        action = re.search(r'<form id="consent-form" method="post" action="([^"]+)"',
                           page.text)
        assert action
        chosen = allow if allow is not None else re.findall(
            r'name="allow" value="([^"]+)"', page.text)
        landed = browser.post(urljoin(page.url, unescape(action.group(1))), timeout=10,
                              data={"csrf_token": _field(page.text, "csrf_token"),
                                    "decision": decision, "allow": chosen})
        return landed.url
