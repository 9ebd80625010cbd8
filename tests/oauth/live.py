"""The api served over real HTTP from a thread, for clients that are not the test client."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from urllib.parse import urljoin

import requests
from flask import Flask
from werkzeug.serving import make_server


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
