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


#: Files taken from a directory given to ``catalog add`` (a file named explicitly is
#: always tried): anything else there (cover art, playlists, notes) is not audio.
AUDIO_SUFFIXES = frozenset({".mp3", ".m4a", ".mp4", ".aac", ".flac", ".wav", ".ogg", ".oga",
                            ".opus", ".aif", ".aiff"})


def _audio_files(paths: tuple[Path, ...]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            found.append(path)
    return list(dict.fromkeys(found))


@main.group()
def catalog() -> None:
    """Protected catalog tracks: uploads that match one end copyright_match."""


@catalog.command("add")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--rights-holder", required=True, help="Who owns the tracks (shown to operators).")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(1, 16),
              help="Files decoded and fingerprinted at once.")
def catalog_add(paths: tuple[Path, ...], rights_holder: str, jobs: int) -> None:
    """Register files, or every audio file under directories, as protected tracks.

    Each file is validated and decoded like an upload, fingerprinted and indexed.
    Files already registered (same SHA-256) are skipped; a file that fails is
    reported and the others carry on. Prints a JSON summary; exits 1 if any failed.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from soundkit import fingerprints as fpx

    holder = rights_holder.strip()
    if not holder or len(holder) > 200:
        raise click.ClickException("--rights-holder must be 1 to 200 characters")
    files = _audio_files(paths)
    if not files:
        raise click.ClickException("no audio files found in the paths given")
    settings = _settings()
    limits = fpx.file_limits(settings)
    database = Database(settings.database_url)
    with database.session() as session:
        known = fpx.catalog_hashes(session)
    summary: dict[str, list[dict[str, Any]]] = {"added": [], "skipped": [], "failed": []}

    def prepare(path: Path) -> fpx.Prepared:
        return fpx.prepare_catalog_file(path, limits, known)

    with ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(files), unit="file", file=sys.stderr, disable=None) as bar:
        for prepared in pool.map(prepare, files):
            outcome, entry = fpx.register_prepared(database, prepared, holder, known)
            summary[outcome].append(entry)
            bar.update(1)
    if summary["added"]:
        fpx.repack_index(database.engine)  # refit the layout to the grown index
        with database.session() as session:
            fpx.refresh_statistics(session)
    database.dispose()
    _print_json({"added": len(summary["added"]), "skipped": len(summary["skipped"]),
                 "failed": len(summary["failed"]), **{f"{k}_files": v
                                                     for k, v in summary.items()}})
    if summary["failed"]:
        sys.exit(1)


@catalog.command("list")
def catalog_list() -> None:
    """Every catalog track as JSON."""
    from soundkit import fingerprints as fpx

    with _db().session() as session:
        _print_json([{"id": e.track.id, "title": e.track.title,
                      "rights_holder": e.track.rights_holder, "duration_s": e.track.duration_s,
                      "hashes": e.hash_count, "sha256": e.track.sha256,
                      "source_name": e.track.source_name,
                      "created_at": e.track.created_at.isoformat()}
                     for e in fpx.list_catalog(session)])


@catalog.command("remove")
@click.argument("track_id", type=int)
def catalog_remove(track_id: int) -> None:
    """Delete a catalog track and its fingerprint."""
    from soundkit import fingerprints as fpx

    with _db().session() as session:
        removed = fpx.remove_catalog_track(session, track_id)
        if removed is None:
            raise click.ClickException(f"no catalog track {track_id}")
        _print_json({"removed": removed.id, "title": removed.title})


@main.command("identify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def identify(file: Path) -> None:
    """Which catalog tracks and sounds FILE matches, best first, as JSON."""
    from pipelines import MediaProcessingError, MediaRejected
    from soundkit import fingerprints as fpx

    settings = _settings()
    try:
        analysed = fpx.analyse_file(file, fpx.file_limits(settings), query=True)
    except (MediaRejected, MediaProcessingError) as error:
        raise click.ClickException(f"{file}: {error}") from None
    with Database(settings.database_url).session() as session:
        found = fpx.identify(session, analysed.fingerprint)
    _print_json([item.as_json() for item in found])


@main.command("run")
def run() -> None:
    """Set up and start api, worker and beat on the current settings (``make run``)."""
    from soundkit import devserver

    devserver.main(_settings())


if __name__ == "__main__":
    main()
