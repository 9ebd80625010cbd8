"""``soundkit login``: connect a desktop app to a creator's account the way real apps do.

This is the reference for a native app (RFC 8252): it listens on the loopback
redirect URI registered for the app, opens the creator's browser at Login Kit's
authorization endpoint with PKCE (S256) and a random ``state``, receives the code
on the loopback address, and exchanges it at the token endpoint. The creator signs
in and consents in the browser; their password never passes through this process.

The tokens are written to a file readable only by the current user, one entry per
api URL and app, so ``soundkit push --token`` can be given the stored access token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8719/callback"
DEFAULT_SCOPE = "user.info.basic,sound.upload,sound.list"

DONE_PAGE = b"""<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Soundkit</title><body style="font:16px/1.5 system-ui,sans-serif;max-width:30rem;
margin:4rem auto;padding:0 1rem"><h1>%s</h1><p>%s</p></body></html>"""


class LoginError(RuntimeError):
    """The flow did not produce tokens; the message says why."""


@dataclass(frozen=True)
class Credentials:
    """What the token endpoint returned, plus where and when."""

    api_url: str
    client_key: str
    access_token: str
    refresh_token: str
    open_id: str
    scope: str
    expires_at: int
    refresh_expires_at: int


def pkce_pair() -> tuple[str, str]:
    """A fresh ``(code_verifier, code_challenge)`` for S256."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


def check_loopback(redirect_uri: str) -> tuple[str, int, str]:
    """(host, port, path) of an ``http://`` loopback redirect URI with an explicit port."""
    parts = urlsplit(redirect_uri)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or not parts.port:
        raise LoginError(f"redirect URI {redirect_uri!r}: expected http://127.0.0.1:PORT/path "
                         "(a loopback address with a port), as registered for the app")
    return parts.hostname, parts.port, parts.path or "/"


def authorize_url(api_url: str, *, client_key: str, redirect_uri: str, scope: str, state: str,
                  code_challenge: str, force_consent: bool = False) -> str:
    params = {"client_key": client_key, "response_type": "code", "scope": scope,
              "redirect_uri": redirect_uri, "state": state, "code_challenge": code_challenge,
              "code_challenge_method": "S256"}
    if force_consent:
        params["disable_auto_auth"] = "1"
    return f"{api_url.rstrip('/')}/v2/auth/authorize/?{urlencode(params)}"


class _Callback:
    """A one-shot HTTP listener for the redirect; remembers the first query it gets."""

    def __init__(self, host: str, port: int, path: str) -> None:
        received: dict[str, str] = {}
        arrived = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != path or arrived.is_set():
                    self.send_error(404)
                    return
                received.update({k: v[0] for k, v in parse_qs(parts.query).items()})
                ok = "code" in received
                title, text = (("Connected", "You can close this tab and go back to the "
                                "terminal.") if ok else
                               ("Not connected", "The app was not given access. You can close "
                                "this tab."))
                body = DONE_PAGE % (title.encode(), text.encode())
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)
                arrived.set()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the code must not end up in terminal scrollback."""

        bind_host = "::1" if host == "::1" else "127.0.0.1"
        try:
            self.server = ThreadingHTTPServer((bind_host, port), Handler)
        except OSError as error:
            raise LoginError(f"cannot listen on {bind_host}:{port} for the redirect: {error}") \
                from None
        self.received, self.arrived = received, arrived
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, timeout: float) -> dict[str, str]:
        try:
            if not self.arrived.wait(timeout):
                raise LoginError(f"no answer from the browser within {timeout:.0f} s")
            return dict(self.received)
        finally:
            self.server.shutdown()
            self.server.server_close()


def exchange_code(api_url: str, *, client_key: str, code: str, redirect_uri: str,
                  code_verifier: str, client_secret: str | None = None) -> Credentials:
    data = {"grant_type": "authorization_code", "client_key": client_key, "code": code,
            "redirect_uri": redirect_uri, "code_verifier": code_verifier}
    if client_secret:
        data["client_secret"] = client_secret
    try:
        response = requests.post(f"{api_url.rstrip('/')}/v2/oauth/token/", data=data, timeout=30)
    except requests.RequestException as error:
        raise LoginError(f"cannot reach {api_url}: {error}") from None
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        raise LoginError(f"token endpoint answered HTTP {response.status_code} without JSON") \
            from None
    if response.status_code != 200 or "access_token" not in body:
        raise LoginError(f"token endpoint refused: {body.get('error')}: "
                         f"{body.get('error_description')}")
    now = int(time.time())
    return Credentials(api_url=api_url, client_key=client_key,
                       access_token=body["access_token"], refresh_token=body["refresh_token"],
                       open_id=body["open_id"], scope=body["scope"],
                       expires_at=now + int(body["expires_in"]),
                       refresh_expires_at=now + int(body["refresh_expires_in"]))


def login(api_url: str, client_key: str, *, redirect_uri: str = DEFAULT_REDIRECT_URI,
          scope: str = DEFAULT_SCOPE, client_secret: str | None = None,
          force_consent: bool = False, timeout: float = 300.0,
          open_browser: Callable[[str], Any] = webbrowser.open,
          echo: Callable[[str], Any] = print) -> Credentials:
    """Run the whole flow; raises :class:`LoginError` with a readable reason."""
    host, port, path = check_loopback(redirect_uri)
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(24)
    callback = _Callback(host, port, path)
    url = authorize_url(api_url, client_key=client_key, redirect_uri=redirect_uri, scope=scope,
                        state=state, code_challenge=challenge, force_consent=force_consent)
    echo(f"Opening your browser to connect the app. If it does not open, visit:\n  {url}")
    open_browser(url)
    answer = callback.wait(timeout)
    if not secrets.compare_digest(answer.get("state", ""), state):
        raise LoginError("the answer's state does not match this login (stale or forged)")
    if "error" in answer:
        raise LoginError(f"not connected: {answer['error']}"
                         + (f" ({answer['error_description']})"
                            if answer.get("error_description") else ""))
    if "code" not in answer:
        raise LoginError("the browser came back without a code")
    return exchange_code(api_url, client_key=client_key, code=answer["code"],
                         redirect_uri=redirect_uri, code_verifier=verifier,
                         client_secret=client_secret)


def save(path: Path, credentials: Credentials) -> Path:
    """Add or replace this api/app's entry in ``path`` (mode 0600)."""
    stored: dict[str, Any] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            stored = {}
    stored[f"{credentials.api_url.rstrip('/')} {credentials.client_key}"] = asdict(credentials)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(stored, indent=2) + "\n")
    return path
