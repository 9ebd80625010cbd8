"""A creator connects an app in a real browser (Debian's Chromium through Playwright).

The app side is Authlib's ``OAuth2Session`` (requests), a standard OAuth 2.0 client
that knows nothing of this project: it builds the authorization URL with PKCE,
checks ``state``, exchanges the code with HTTP Basic client authentication and
calls the API with the bearer token. The api runs over HTTP in a thread; its redirect
URI is the bundled reference client page, ``/demo/callback``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from authlib.integrations.requests_client import OAuth2Session
from playwright.sync_api import Browser, Page, expect, sync_playwright

from soundkit.settings import Settings
from tests.conftest import RecordingDispatcher
from tests.oauth.live import serve_with_web_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def live(make_settings: Callable[..., Settings],
         dispatcher: RecordingDispatcher) -> Iterator[dict[str, Any]]:
    with serve_with_web_app(make_settings, dispatcher, name="Beat Lab Web",
                            developer="Beat Lab Inc") as found:
        yield found


@pytest.mark.browser
def test_creator_connects_an_app_then_removes_its_access(browser: Browser,
                                                         live: dict[str, Any]) -> None:
    api = live["api"]
    app_client = OAuth2Session(
        client_id=live["client_key"], client_secret=live["client_secret"],
        scope="user.info.basic sound.upload sound.list", redirect_uri=live["redirect_uri"],
        code_challenge_method="S256")
    verifier = secrets.token_urlsafe(48)
    url, state = app_client.create_authorization_url(f"{api}/v2/auth/authorize/",
                                                     code_verifier=verifier)

    page: Page = browser.new_page()
    page.goto(url)

    # Sign in.
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    # Consent: the app, its developer, each permission in words; one optional one off.
    expect(page.get_by_role("heading", name="Beat Lab Web wants to use your Soundkit account")) \
        .to_be_visible()
    expect(page.get_by_text("Beat Lab Inc")).to_be_visible()
    expect(page.locator('[data-scope="user.info.basic"]')).to_contain_text("Required")
    upload = page.get_by_role("switch", name="Add sounds to your sound library")
    listing = page.get_by_role("switch", name="See the sounds this app added and their status")
    expect(upload).to_be_checked()
    expect(listing).to_be_checked()
    upload.focus()
    page.keyboard.press("Space")  # keyboard operable
    expect(upload).not_to_be_checked()
    page.get_by_role("button", name="Authorize").click()

    # The reference client page receives the code; the app exchanges it.
    page.wait_for_url(f"{live['redirect_uri']}?*")
    expect(page.locator("#scopes")).to_have_text("user.info.basic,sound.list")
    token = app_client.fetch_token(f"{api}/v2/oauth/token/", authorization_response=page.url,
                                   state=state, code_verifier=verifier)
    assert token["scope"] == "user.info.basic sound.list"  # echoed in the app's separator
    assert token["expires_in"] == 86400

    info = app_client.get(f"{api}/v2/user/info/")
    assert info.status_code == 200
    user = info.json()["data"]["user"]
    assert user["display_name"] == "Alice A." and user["open_id"] == token["open_id"]
    assert app_client.get(f"{api}/v2/sound/list/").status_code == 200
    denied = app_client.post(f"{api}/v2/sound/upload/")
    assert denied.status_code == 403
    assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]

    # Connected apps shows it; Remove access takes everything back.
    page.goto(f"{api}/settings/apps")
    card = page.locator("li.app", has_text="Beat Lab Web")
    expect(card).to_contain_text("See the sounds this app added and their status")
    expect(card).not_to_contain_text("Add sounds to your sound library")
    expect(card.locator(".sounds-added")).to_have_text("0")
    expect(card).not_to_contain_text("Not used yet")
    card.get_by_role("button", name="Remove access for Beat Lab Web").click()
    expect(page.get_by_role("status")).to_have_text("Beat Lab Web can no longer use your account.")
    expect(page.locator("li.app", has_text="Beat Lab Web")).to_have_count(0)

    rejected = app_client.get(f"{api}/v2/user/info/")
    assert rejected.status_code == 401
    assert rejected.headers["WWW-Authenticate"] == (
        'Bearer realm="soundkit", error="invalid_token", '
        'error_description="The access token is invalid, expired or revoked."')
    refreshed = app_client.post(f"{api}/v2/oauth/token/", auth=(
        live["client_key"], live["client_secret"]), data={
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert refreshed.json()["error"] == "invalid_grant"
