"""The consent page: what it shows, the toggles, Cancel, and automatic approval."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import func, select
from werkzeug.datastructures import MultiDict

from soundkit import accounts
from soundkit.models import AuthorizationCode, Consent, Token
from tests.oauth.conftest import WEB_REDIRECT, Flow, csrf_token, query

ALL = ["user.info.basic", "sound.upload", "sound.list"]


def _codes(flow: Flow) -> int:
    with flow.world.db.session() as session:
        return session.scalar(select(func.count(AuthorizationCode.id))) or 0


def test_consent_page_names_the_app_its_developer_and_each_scope_in_words(
        signed_in: Flow) -> None:
    page = signed_in.client.get(signed_in.authorize_url())
    assert page.status_code == 200
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    html = page.text
    assert "Beat Lab" in html and "Beat Lab Inc" in html
    for words in accounts.SCOPES.values():
        assert words in html
    required = re.search(r'data-scope="user.info.basic">(.*?)</li>', html, re.S)
    assert required and "Required" in required.group(1) and 'type="checkbox"' not in \
        required.group(1)
    for scope in ("sound.upload", "sound.list"):
        item = re.search(rf'data-scope="{scope}">(.*?)</li>', html, re.S)
        assert item and 'type="checkbox"' in item.group(1) and "checked" in item.group(1)
        assert "Required" not in item.group(1)
    assert 'value="authorize"' in html and 'value="cancel"' in html
    assert "beatlab.example" in html  # where the creator goes next


def test_turning_an_optional_scope_off_narrows_code_token_and_redirect(signed_in: Flow) -> None:
    got = signed_in.code(allow=["user.info.basic", "sound.list"])
    assert got["scopes"] == "user.info.basic,sound.list"
    assert got["state"] == "st-123"
    token = signed_in.exchange(got["code"]).get_json()
    assert token["scope"] == "user.info.basic,sound.list"
    access = token["access_token"]
    upload = signed_in.client.post("/v2/sound/upload/",
                                   headers={"Authorization": f"Bearer {access}"})
    assert upload.status_code == 403
    assert signed_in.api(access, "/v2/sound/list/").status_code == 200
    with signed_in.world.db.session() as session:
        consent = session.scalar(select(Consent))
        assert consent is not None and consent.scope == "user.info.basic,sound.list"


def test_a_required_scope_cannot_be_dropped_by_editing_the_form(signed_in: Flow) -> None:
    response = signed_in.decide(signed_in.authorize_url(), allow=["sound.upload", "sound.list"])
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "cannot be turned off" in response.text
    assert _codes(signed_in) == 0


def test_scopes_the_creator_was_not_asked_about_cannot_be_added(signed_in: Flow) -> None:
    got = signed_in.code(scope="user.info.basic", allow=ALL)
    assert got["scopes"] == "user.info.basic"
    assert signed_in.exchange(got["code"]).get_json()["scope"] == "user.info.basic"


def test_granted_is_requested_and_allowed_for_the_app(signed_in: Flow) -> None:
    with signed_in.world.db.session() as session:
        created = accounts.create_app(
            session, name="Uploader Only", redirect_uris=[WEB_REDIRECT], developer="U",
            secret_key=signed_in.world.settings.secret_key,
            scopes=["user.info.basic", "sound.upload"])
        key, secret = created.app.client_key, created.client_secret
    page = signed_in.client.get(signed_in.authorize_url(client_key=key))
    assert accounts.SCOPES["sound.list"] not in page.text
    got = signed_in.code(client_key=key, allow=ALL)
    assert got["scopes"] == "user.info.basic,sound.upload"
    token = signed_in.exchange(got["code"], client_key=key, secret=secret).get_json()
    assert token["scope"] == "user.info.basic,sound.upload"


def test_only_unknown_or_disallowed_scopes_are_an_invalid_scope_error(signed_in: Flow) -> None:
    unknown = signed_in.client.get(signed_in.authorize_url(scope="user.info.basic,video.publish"))
    assert unknown.status_code == 302
    assert unknown.headers["Location"].startswith(WEB_REDIRECT + "?")
    assert query(unknown.headers["Location"])["error"] == "invalid_scope"
    assert query(unknown.headers["Location"])["state"] == "st-123"


def test_no_scope_means_the_required_one(signed_in: Flow) -> None:
    got = signed_in.code(scope=None)  # type: ignore[arg-type]
    assert got["scopes"] == "user.info.basic"


def test_cancel_sends_access_denied_with_state_and_no_code(signed_in: Flow) -> None:
    response = signed_in.decide(signed_in.authorize_url(), decision="cancel")
    assert response.status_code == 302
    assert response.headers["Location"].startswith(WEB_REDIRECT + "?")
    got = query(response.headers["Location"])
    assert got["error"] == "access_denied" and got["state"] == "st-123"
    assert "code" not in got
    assert _codes(signed_in) == 0


def test_switching_everything_optional_off_still_grants_the_required_scope(
        signed_in: Flow) -> None:
    # A browser still sends the required scope's hidden field with every toggle off.
    assert signed_in.code(allow=["user.info.basic"])["scopes"] == "user.info.basic"


def test_an_app_already_allowed_the_same_scopes_is_sent_straight_back(signed_in: Flow) -> None:
    signed_in.code()
    again = signed_in.client.get(signed_in.authorize_url(state="second"))
    assert again.status_code == 302
    got = query(again.headers["Location"])
    assert got["state"] == "second" and got["scopes"] == ",".join(ALL) and got["code"]
    assert signed_in.exchange(got["code"]).status_code == 200


def test_disable_auto_auth_always_shows_the_consent_page(signed_in: Flow) -> None:
    signed_in.code()
    page = signed_in.client.get(signed_in.authorize_url(disable_auto_auth="1"))
    assert page.status_code == 200
    assert 'value="authorize"' in page.text


def test_asking_for_more_than_was_allowed_shows_the_consent_page_again(signed_in: Flow) -> None:
    signed_in.code(allow=["user.info.basic"])
    page = signed_in.client.get(signed_in.authorize_url())
    assert page.status_code == 200
    narrower = signed_in.client.get(signed_in.authorize_url(scope="user.info.basic"))
    assert narrower.status_code == 302


def test_signed_out_creator_signs_in_and_comes_back_to_the_consent_page(flow: Flow) -> None:
    url = flow.authorize_url()
    response = flow.client.get(url)
    assert response.status_code == 302
    login = urlsplit(response.headers["Location"])
    assert login.path == "/login"
    assert parse_qs(login.query)["next"] == [url]
    page = flow.client.get(response.headers["Location"])
    signed = flow.client.post("/login", data={
        "username": "alice", "password": "correct horse battery",
        "csrf_token": csrf_token(page.text), "next": url})
    assert signed.status_code == 302 and signed.headers["Location"] == url
    assert 'value="authorize"' in flow.client.get(url).text


def test_the_consent_form_needs_its_csrf_token(signed_in: Flow) -> None:
    url = signed_in.authorize_url()
    signed_in.client.get(url)
    response = signed_in.client.post(url, data={"decision": "authorize", "allow": ALL})
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert _codes(signed_in) == 0


def test_form_fields_never_override_the_apps_request(signed_in: Flow) -> None:
    """Fields named like OAuth parameters in the POST body are not read (query only)."""
    url = signed_in.authorize_url(scope="user.info.basic")
    page = signed_in.client.get(url)
    response = signed_in.client.post(url, data={
        "csrf_token": csrf_token(page.text), "decision": "authorize", "allow": ALL,
        "scope": "user.info.basic,sound.upload,sound.list",
        "redirect_uri": "https://evil.example/cb", "client_id": "sk-someone-else"})
    assert response.status_code == 302
    assert response.headers["Location"].startswith(WEB_REDIRECT + "?")
    assert query(response.headers["Location"])["scopes"] == "user.info.basic"


def test_scopes_come_back_in_the_separator_the_app_used(signed_in: Flow) -> None:
    spaced = signed_in.tokens(scope="user.info.basic sound.list", disable_auto_auth="1")
    assert spaced["scope"] == "user.info.basic sound.list"
    commas = signed_in.tokens(scope="user.info.basic,sound.list", disable_auto_auth="1")
    assert commas["scope"] == "user.info.basic,sound.list"


def test_later_grants_add_to_the_consent_until_access_is_removed(signed_in: Flow) -> None:
    signed_in.code(allow=["user.info.basic", "sound.list"])
    signed_in.code(allow=["user.info.basic", "sound.upload"], disable_auto_auth="1")
    with signed_in.world.db.session() as session:
        consent = session.scalar(select(Consent))
        assert consent is not None and consent.scope == ",".join(ALL)
        assert session.scalar(select(func.count(Token.id))) == 0  # codes only, no tokens yet


def test_the_first_form_on_the_page_submitted_as_is_authorizes(signed_in: Flow) -> None:
    """A client that fills in the page's first form, with no button value, connects."""
    url = signed_in.authorize_url()
    html = signed_in.client.get(url).text
    first = re.search(r"<form\b(.*?)</form>", html, re.S)
    assert first and 'id="consent-form"' in first.group(1)
    fields = re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', first.group(1))
    form = MultiDict([(k, v.replace("&amp;", "&")) for k, v in fields])
    response = signed_in.client.post(url, data=form)
    assert response.status_code == 302
    assert query(response.headers["Location"])["scopes"] == ",".join(ALL)
