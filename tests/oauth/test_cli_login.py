"""``soundkit login`` and ``soundkit apps create``, against the api served over HTTP."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select

from api import create_app
from soundkit import accounts, login
from soundkit.cli import main
from soundkit.db import Database
from soundkit.devserver import seed_demo
from soundkit.models import App
from soundkit.settings import Settings
from tests.conftest import SECRET, RecordingDispatcher, World, build_world
from tests.oauth.conftest import PASSWORD
from tests.oauth.live import browse_and_consent, free_port, serve


@pytest.fixture
def live(make_settings: Callable[..., Settings], dispatcher: RecordingDispatcher,
         var_dir: Path) -> Iterator[tuple[str, World, str]]:
    """(api URL, world, a desktop app's loopback redirect URI) with the api on a real port."""
    port = free_port()
    settings = make_settings(SOUNDKIT_PUBLIC_URL=f"http://127.0.0.1:{port}")
    app = create_app(settings, dispatcher=dispatcher)
    db = Database(settings.database_url)
    world = build_world(db, settings)
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    with serve(app, port) as url:
        yield url, world, redirect_uri
    db.dispose()
    app.extensions["soundkit"].db.dispose()


def _desktop_app(world: World, redirect_uri: str) -> str:
    with world.db.session() as session:
        return accounts.create_app(session, name="Terminal Studio", developer="Beat Lab Inc",
                                   redirect_uris=[redirect_uri], public=True,
                                   secret_key=world.settings.secret_key).app.client_key


def test_login_runs_the_browser_flow_with_pkce_on_loopback(
        live: tuple[str, World, str], tmp_path: Path) -> None:
    api, world, redirect_uri = live
    key = _desktop_app(world, redirect_uri)
    opened: list[str] = []

    def browser(url: str) -> None:
        opened.append(url)
        browse_and_consent(url, "alice", PASSWORD, allow=["user.info.basic", "sound.upload"])

    credentials = login.login(api, key, redirect_uri=redirect_uri, open_browser=browser,
                              echo=lambda _text: None, timeout=20)
    assert "code_challenge_method=S256" in opened[0] and "code_challenge=" in opened[0]
    assert credentials.scope == "user.info.basic,sound.upload"
    info = requests.get(f"{api}/v2/user/info/", timeout=10,
                        headers={"Authorization": f"Bearer {credentials.access_token}"})
    assert info.json()["data"]["user"]["open_id"] == credentials.open_id
    path = login.save(tmp_path / "credentials.json", credentials)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())[f"{api} {key}"]
    assert stored["refresh_token"] == credentials.refresh_token


def test_cancel_in_the_browser_is_reported(live: tuple[str, World, str]) -> None:
    api, world, redirect_uri = live
    key = _desktop_app(world, redirect_uri)
    with pytest.raises(login.LoginError, match="access_denied"):
        login.login(api, key, redirect_uri=redirect_uri, echo=lambda _text: None, timeout=20,
                    open_browser=lambda url: browse_and_consent(url, "alice", PASSWORD,
                                                                decision="cancel"))


def test_an_answer_with_another_state_is_refused(live: tuple[str, World, str]) -> None:
    api, world, redirect_uri = live
    key = _desktop_app(world, redirect_uri)

    def forged(_url: str) -> None:
        requests.get(f"{redirect_uri}?code=stolen&state=not-ours", timeout=10)

    with pytest.raises(login.LoginError, match="state"):
        login.login(api, key, redirect_uri=redirect_uri, open_browser=forged,
                    echo=lambda _text: None, timeout=20)


def test_login_refuses_a_non_loopback_redirect() -> None:
    with pytest.raises(login.LoginError, match="loopback"):
        login.login("http://127.0.0.1:1", "sk1", redirect_uri="https://app.example/cb")


def test_the_login_command_stores_the_tokens(live: tuple[str, World, str], var_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    api, world, redirect_uri = live
    key = _desktop_app(world, redirect_uri)
    monkeypatch.setattr("webbrowser.open",
                        lambda url: browse_and_consent(url, "alice", PASSWORD))
    result = CliRunner().invoke(main, ["login", "--app", key, "--redirect-uri", redirect_uri,
                                       "--api", api, "--timeout", "20"], env=_env(var_dir))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout[:result.stdout.rindex("}") + 1])
    assert Path(printed["saved_to"]) == var_dir / "credentials.json"
    assert printed["scope"] == "user.info.basic,sound.upload,sound.list"
    info = requests.get(f"{api}/v2/sound/list/", timeout=10,
                        headers={"Authorization": f"Bearer {printed['access_token']}"})
    assert info.status_code == 200


def _env(var_dir: Path) -> dict[str, str]:
    return {"SOUNDKIT_VAR_DIR": str(var_dir), "SOUNDKIT_SECRET_KEY": SECRET,
            "DATABASE_URL": f"sqlite:///{var_dir / 'soundkit.db'}"}


@pytest.mark.parametrize(("args", "ok"), [
    (["--public", "--redirect-uri", "http://127.0.0.1:8719/callback"], True),
    (["--redirect-uri", "https://app.example/cb", "--scope", "user.info.basic,sound.upload"],
     True),
    (["--redirect-uri", "http://app.example/cb"], False),
    (["--public", "--redirect-uri", "http://127.0.0.1/callback"], False),
    (["--redirect-uri", "https://app.example/cb", "--scope", "video.publish"], False),
])
def test_apps_create(var_dir: Path, settings: Settings, args: list[str], ok: bool) -> None:
    result = CliRunner().invoke(main, ["apps", "create", "--name", "Made Here",
                                       "--developer", "Dev", *args], env=_env(var_dir))
    assert (result.exit_code == 0) is ok, result.output
    if ok:
        made: dict[str, Any] = json.loads(result.stdout)
        assert made["client_key"].startswith("sk") and made["webhook_secret"]
        assert (made["client_secret"] is None) is made["public"]


def test_demo_seed_registers_working_redirect_uris(make_settings: Callable[..., Settings],
                                                   dispatcher: RecordingDispatcher) -> None:
    settings = make_settings(SOUNDKIT_PUBLIC_URL="http://127.0.0.1:8123")
    demo = seed_demo(settings)
    assert demo["redirect_uri"] == "http://127.0.0.1:8123/demo/callback"
    assert demo["desktop_redirect_uri"] == login.DEFAULT_REDIRECT_URI
    with Database(settings.database_url).session() as session:
        apps = {a.client_key: a for a in session.scalars(select(App))}
        assert apps[demo["client_key"]].redirect_uris == [demo["redirect_uri"]]
        assert apps[demo["desktop_client_key"]].is_public
        assert apps[demo["desktop_client_key"]].redirect_uris == [login.DEFAULT_REDIRECT_URI]
    moved = seed_demo(make_settings(SOUNDKIT_PUBLIC_URL="http://127.0.0.1:9000"))
    assert moved["client_key"] == demo["client_key"]
    with Database(settings.database_url).session() as session:
        app = session.scalar(select(App).where(
            App.client_key == demo["client_key"]))
        assert app is not None and app.redirect_uris == ["http://127.0.0.1:9000/demo/callback"]
    client = create_app(settings, dispatcher=dispatcher).test_client()
    page = client.get("/demo/callback?code=abc123&scopes=user.info.basic&state=demo")
    assert page.status_code == 200
    assert '<code id="code">abc123</code>' in page.text
    assert "http://127.0.0.1:8123/v2/oauth/token/" in page.text
    denied = client.get("/demo/callback?error=access_denied&state=demo")
    assert "access_denied" in denied.text
