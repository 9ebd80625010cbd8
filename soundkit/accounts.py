"""Creating creators, apps and tokens: shared by the CLI, ``make run``'s demo seed and tests."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlparse

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from soundkit.models import App, AuditEntry, Consent, Developer, Token, User, utcnow
from soundkit.security import encrypt, hash_token, new_token

SCOPES: dict[str, str] = {
    "user.info.basic": "Read your profile info (avatar, display name)",
    "sound.upload": "Add sounds to your sound library",
    "sound.list": "See the sounds this app added and their status",
}
REQUIRED_SCOPES = frozenset({"user.info.basic"})
ACCESS_TOKEN_TTL = timedelta(hours=24)
REFRESH_TOKEN_TTL = timedelta(days=365)
USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{2,63}$")
MIN_PASSWORD = 8

_hasher = PasswordHasher()


class AccountError(ValueError):
    """Bad input to an account operation; the message says which and why."""


def parse_scopes(raw: str) -> list[str]:
    """Comma- or space-separated scopes, each one we know, in a stable order."""
    scopes = [s for s in re.split(r"[,\s]+", raw.strip()) if s]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise AccountError(f"unknown scope(s): {', '.join(unknown)}")
    return [s for s in SCOPES if s in scopes]


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    if not stored:
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(session: Session, username: str, password: str, display_name: str | None = None,
                *, operator: bool = False) -> User:
    username = username.strip().lower()
    if not USERNAME.match(username):
        raise AccountError("username: 3-64 characters, lowercase letters, digits, . _ -")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise AccountError(f"username: {username!r} is taken")
    user = User(username=username, display_name=(display_name or username).strip()[:200],
                password_hash=hash_password(password), is_operator=operator)
    session.add(user)
    session.flush()
    return user


def developer_named(session: Session, name: str) -> Developer:
    developer = session.scalar(select(Developer).where(Developer.name == name))
    if developer is None:
        developer = Developer(name=name)
        session.add(developer)
        session.flush()
    return developer


def check_redirect_uri(uri: str, *, public: bool) -> str:
    """Web apps need https; desktop apps may use http on a loopback address with a port."""
    parsed = urlparse(uri)
    if parsed.fragment or parsed.username or parsed.password or not parsed.hostname:
        raise AccountError(f"redirect URI {uri!r}: no fragment or userinfo, and a host")
    loopback = parsed.hostname in {"127.0.0.1", "::1", "localhost"}
    if parsed.scheme == "https":
        return uri
    if parsed.scheme == "http" and loopback and parsed.port:
        return uri
    kind = "desktop/mobile" if public else "web"
    raise AccountError(f"redirect URI {uri!r}: {kind} apps need https, or http on a "
                       "loopback address with a port")


@dataclass(frozen=True)
class NewApp:
    app: App
    client_secret: str | None
    webhook_secret: str


def create_app(session: Session, *, name: str, redirect_uris: list[str], developer: str,
               secret_key: str, scopes: list[str] | None = None,
               webhook_url: str | None = None, public: bool = False) -> NewApp:
    """Register an app; the secrets are returned once and only their hash/cipher kept."""
    if not name.strip():
        raise AccountError("name: required")
    if not redirect_uris:
        raise AccountError("redirect URI: at least one is required")
    uris = [check_redirect_uri(u, public=public) for u in redirect_uris]
    if webhook_url and urlparse(webhook_url).scheme not in {"http", "https"}:
        raise AccountError(f"webhook URL {webhook_url!r}: expected http(s)://…")
    client_secret = None if public else new_token("sks_")
    webhook_secret = new_token("whs_")
    app = App(client_key="sk" + secrets.token_hex(8), name=name.strip(),
              developer_id=developer_named(session, developer.strip() or name).id,
              is_public=public, redirect_uris=uris,
              allowed_scopes=",".join(scopes or list(SCOPES)),
              client_secret_hash=hash_token(client_secret) if client_secret else None,
              webhook_url=webhook_url or None,
              webhook_secret_encrypted=encrypt(secret_key, webhook_secret))
    session.add(app)
    session.flush()
    return NewApp(app, client_secret, webhook_secret)


def grant_consent(session: Session, user: User, app: App, scopes: list[str]) -> Consent:
    consent = session.scalar(select(Consent).where(Consent.user_id == user.id,
                                                   Consent.app_id == app.id))
    if consent is None:
        consent = Consent(user_id=user.id, app_id=app.id, scope=",".join(scopes))
        session.add(consent)
    else:
        consent.scope, consent.revoked_at, consent.granted_at = ",".join(scopes), None, utcnow()
    session.flush()
    return consent


def issue_operator_token(session: Session, *, username: str, client_key: str,
                         scopes: list[str], actor: str) -> tuple[str, Token]:
    """A token issued by an operator, recorded in the audit log and as a consent."""
    user = session.scalar(select(User).where(User.username == username.strip().lower()))
    if user is None:
        raise AccountError(f"user: no creator named {username!r}")
    app = session.scalar(select(App).where(App.client_key == client_key))
    if app is None:
        raise AccountError(f"app: no app with client key {client_key!r}")
    allowed = set(app.allowed_scopes.split(","))
    if not set(scopes) <= allowed:
        raise AccountError(f"scope: the app may only ask for {app.allowed_scopes}")
    scopes = sorted(set(scopes) | REQUIRED_SCOPES, key=list(SCOPES).index)
    grant_consent(session, user, app, scopes)
    raw = new_token("act.")
    now = utcnow()
    token = Token(access_token_hash=hash_token(raw), app_id=app.id, user_id=user.id,
                  scope=",".join(scopes), family_id=secrets.token_hex(16), issued_by="operator",
                  issued_at=now, expires_at=now + ACCESS_TOKEN_TTL)
    session.add(token)
    session.add(AuditEntry(actor=actor, action="token.issue", target=f"{username}@{client_key}",
                           detail={"scope": token.scope}))
    session.flush()
    return raw, token
