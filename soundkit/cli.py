"""The ``soundkit`` command line (API.md, "Command line").

Every command reads the same settings as the api and the worker, so
``soundkit users create`` writes to the database the running api uses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from soundkit import accounts
from soundkit.db import Database
from soundkit.settings import SETTINGS, Settings, SettingsError, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        raise click.ClickException(f"invalid setting {error}") from None


def _db() -> Database:
    return Database(_settings().database_url)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group()
def main() -> None:
    """Soundkit: music apps push tracks into creators' sound libraries."""


@main.command("settings")
def show_settings() -> None:
    """List every setting, its default and what it does."""
    for setting in SETTINGS:
        click.echo(f"{setting.name}={setting.default}\n    {setting.meaning}")


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database to the latest schema."""
    from soundkit import migrate

    settings = _settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.database_url)
    click.echo("database is up to date")


@main.group()
def users() -> None:
    """Creator and operator accounts."""


@users.command("create")
@click.argument("username")
@click.option("--display-name", help="Name shown to apps (defaults to the username).")
@click.option("--operator", is_flag=True, help="May open the operator console.")
def users_create(username: str, display_name: str | None, operator: bool) -> None:
    """Create an account; the password is read from standard input."""
    password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else click.prompt(
        "Password", hide_input=True, confirmation_prompt=True)
    try:
        with _db().session() as session:
            user = accounts.create_user(session, username, password, display_name,
                                        operator=operator)
            _print_json({"id": user.id, "username": user.username,
                         "display_name": user.display_name, "operator": user.is_operator})
    except accounts.AccountError as error:
        raise click.ClickException(str(error)) from None


@main.group()
def apps() -> None:
    """Apps registered with Login Kit."""


@apps.command("create")
@click.option("--name", required=True)
@click.option("--redirect-uri", "redirect_uris", multiple=True, required=True,
              help="Exact redirect URI; repeat for several.")
@click.option("--webhook-url", help="Where signed webhooks are POSTed.")
@click.option("--developer", default="", help="Developer name (apps of one developer share "
              "union_id).")
@click.option("--scope", "scopes", default=",".join(accounts.SCOPES),
              help="Scopes the app may ask for (comma-separated).")
@click.option("--public", is_flag=True, help="A desktop/mobile app: no client secret, PKCE.")
def apps_create(name: str, redirect_uris: tuple[str, ...], webhook_url: str | None,
                developer: str, scopes: str, public: bool) -> None:
    """Register an app; prints its client key and the secrets, shown only this once."""
    settings = _settings()
    try:
        with Database(settings.database_url).session() as session:
            created = accounts.create_app(
                session, name=name, redirect_uris=list(redirect_uris), developer=developer,
                secret_key=settings.secret_key, scopes=accounts.parse_scopes(scopes),
                webhook_url=webhook_url, public=public)
            _print_json({"client_key": created.app.client_key,
                         "client_secret": created.client_secret,
                         "webhook_secret": created.webhook_secret,
                         "redirect_uris": created.app.redirect_uris,
                         "public": created.app.is_public})
    except accounts.AccountError as error:
        raise click.ClickException(str(error)) from None


@main.group()
def tokens() -> None:
    """Operator-issued access tokens."""


@tokens.command("issue")
@click.option("--user", "username", required=True)
@click.option("--app", "client_key", required=True)
@click.option("--scope", "scopes", default=",".join(accounts.SCOPES))
@click.option("--actor", default="cli", help="Recorded in the audit log.")
def tokens_issue(username: str, client_key: str, scopes: str, actor: str) -> None:
    """Issue an access token for a creator and an app (audited)."""
    try:
        with _db().session() as session:
            raw, token = accounts.issue_operator_token(
                session, username=username, client_key=client_key,
                scopes=accounts.parse_scopes(scopes), actor=actor)
            _print_json({"access_token": raw, "scope": token.scope,
                         "expires_at": token.expires_at.isoformat()})
    except accounts.AccountError as error:
        raise click.ClickException(str(error)) from None


@main.command("login")
@click.option("--app", "client_key", required=True, help="The app's client key.")
@click.option("--client-secret", envvar="SOUNDKIT_CLIENT_SECRET", default=None,
              help="Only for confidential (web) apps; desktop apps have none.")
@click.option("--redirect-uri", default="http://127.0.0.1:8719/callback", show_default=True,
              help="A loopback redirect URI registered for the app; login listens on it.")
@click.option("--scope", default=",".join(accounts.SCOPES), show_default=True)
@click.option("--api", "api_url", envvar="SOUNDKIT_API", default=None,
              help="API base URL (default: $SOUNDKIT_PUBLIC_URL or http://127.0.0.1:8000).")
@click.option("--save", "save_to", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Where to store the tokens (default: var/credentials.json).")
@click.option("--force-consent", is_flag=True, help="Show the consent page even if the app "
              "was already allowed (disable_auto_auth=1).")
@click.option("--no-browser", is_flag=True, help="Only print the URL to open.")
@click.option("--timeout", default=300.0, show_default=True)
def login(client_key: str, client_secret: str | None, redirect_uri: str, scope: str,
          api_url: str | None, save_to: Path | None, force_consent: bool, no_browser: bool,
          timeout: float) -> None:
    """Connect an app to your account in the browser (Login Kit, PKCE on loopback)."""
    import webbrowser

    from soundkit import login as flow

    settings = _settings()
    try:
        credentials = flow.login(
            api_url or settings.public_url, client_key, redirect_uri=redirect_uri, scope=scope,
            client_secret=client_secret, force_consent=force_consent, timeout=timeout,
            open_browser=(lambda _url: None) if no_browser else webbrowser.open,
            echo=lambda text: click.echo(text, err=True))
    except flow.LoginError as error:
        raise click.ClickException(str(error)) from None
    path = flow.save(save_to or settings.var_dir / "credentials.json", credentials)
    _print_json({"access_token": credentials.access_token, "open_id": credentials.open_id,
                 "scope": credentials.scope, "expires_at": credentials.expires_at,
                 "saved_to": str(path)})
    click.echo(f"Connected. Push a sound with:\n  soundkit push FILE --token "
               f"{credentials.access_token}", err=True)


@main.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--token", envvar="SOUNDKIT_TOKEN", required=True, help="Access token with "
              "sound.upload (or $SOUNDKIT_TOKEN).")
@click.option("--title")
@click.option("--api", "api_url", envvar="SOUNDKIT_API", default=None,
              help="API base URL (default: $SOUNDKIT_PUBLIC_URL or http://127.0.0.1:8000).")
@click.option("--idempotency-key")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to wait for the "
              "final status.")
@click.option("--no-wait", is_flag=True, help="Print the upload id and return.")
def push(file: Path, token: str, title: str | None, api_url: str | None,
         idempotency_key: str | None, timeout: float, no_wait: bool) -> None:
    """Upload FILE with a progress bar, wait, and print the final status as JSON."""
    from soundkit import client

    base = api_url or _settings().public_url
    try:
        upload_id = client.upload(base, token, file, title=title,
                                  idempotency_key=idempotency_key, progress=True)
        if no_wait:
            _print_json({"upload_id": upload_id})
            return
        status = client.wait(base, token, upload_id, timeout=timeout)
    except client.ClientError as error:
        raise click.ClickException(str(error)) from None
    _print_json(status)
    if status.get("status") == "FAILED":
        sys.exit(1)


@main.command("run")
def run() -> None:
    """Set up and start api, worker and beat on the current settings (``make run``)."""
    from soundkit import devserver

    devserver.main(_settings())


if __name__ == "__main__":
    main()
