"""Creating creators, apps and tokens: shared by the CLI, ``make run``'s demo seed and tests."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlparse

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from soundkit import jobs, webhooks
from soundkit.models import (
    App,
    AuditEntry,
    AuthorizationCode,
    Consent,
    Developer,
    FailReason,
    SignInFailure,
    Sound,
    Token,
    Upload,
    User,
    WebhookDelivery,
    utcnow,
)
from soundkit.security import encrypt, hash_token, new_token

log = logging.getLogger(__name__)

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


def ordered_scopes(scopes: Iterable[str]) -> list[str]:
    """Known scopes in the canonical order of :data:`SCOPES` (unknown ones dropped)."""
    wanted = set(scopes)
    return [s for s in SCOPES if s in wanted]


def split_scopes(raw: str | None) -> list[str]:
    """The words of a comma- or space-separated scope string, as given (nothing checked)."""
    return [s for s in re.split(r"[,\s]+", (raw or "").strip()) if s]


def parse_scopes(raw: str) -> list[str]:
    """Comma- or space-separated scopes, each one we know, in a stable order."""
    scopes = [s for s in re.split(r"[,\s]+", raw.strip()) if s]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise AccountError(f"unknown scope(s): {', '.join(unknown)}")
    return [s for s in SCOPES if s in scopes]


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def use_password_hasher(hasher: PasswordHasher) -> PasswordHasher:
    """Swap the Argon2 parameters (tests use cheap ones); returns the previous hasher.

    Verification reads the parameters from each stored hash, so hashes made with one
    hasher keep verifying after a swap, and :func:`sign_in` re-hashes them with the
    current parameters on the next successful sign-in.
    """
    global _hasher
    previous, _hasher = _hasher, hasher
    return previous


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
    """Record that ``user`` allowed ``app`` the given scopes.

    While a consent is active, new grants add to it: tokens issued under the earlier
    grant still carry their scopes, so the connected-apps page must keep showing
    them until the creator removes access. After a removal the consent starts over.
    """
    consent = session.scalar(select(Consent).where(Consent.user_id == user.id,
                                                   Consent.app_id == app.id))
    if consent is None:
        consent = Consent(user_id=user.id, app_id=app.id, scope=",".join(ordered_scopes(scopes)))
        session.add(consent)
    elif consent.revoked_at is not None:
        consent.scope = ",".join(ordered_scopes(scopes))
        consent.revoked_at, consent.granted_at = None, utcnow()
    else:
        consent.scope = ",".join(ordered_scopes([*split_scopes(consent.scope), *scopes]))
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


# --- Creator sign-in with a throttle ----------------------------------------------------------

#: Failed sign-ins allowed per account, and per network address, in one window. The
#: account limit stops guessing one creator's password from many addresses; the
#: (higher) address limit stops one address from trying many accounts.
SIGN_IN_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_ADDRESS = 30

#: Verified when the username is unknown, so a wrong username costs as long as a
#: wrong password and response times do not reveal which accounts exist.
_DUMMY_HASH: str | None = None


@dataclass(frozen=True)
class SignIn:
    """The outcome of one sign-in attempt: a user, or why not (and for how long)."""

    user_id: int | None
    throttled: bool = False
    retry_after_s: int = 0


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
    return _DUMMY_HASH


def _throttle_wait(session: Session, username: str, remote_addr: str, now: datetime) -> int:
    """Seconds until this account/address may try again (0 = now)."""
    since = now - SIGN_IN_WINDOW
    waits = []
    for column, value, limit in ((SignInFailure.username, username, MAX_FAILURES_PER_ACCOUNT),
                                 (SignInFailure.remote_addr, remote_addr,
                                  MAX_FAILURES_PER_ADDRESS)):
        recent = list(session.scalars(
            select(SignInFailure.created_at).where(column == value,
                                                   SignInFailure.created_at > since)
            .order_by(SignInFailure.created_at.desc()).limit(limit)))
        if len(recent) >= limit:  # the oldest of the last `limit` failures must age out
            waits.append(int((recent[-1] + SIGN_IN_WINDOW - now).total_seconds()) + 1)
    return max(waits, default=0)


def sign_in(session: Session, username: str, password: str, remote_addr: str,
            now: datetime | None = None) -> SignIn:
    """Check a creator's password, refusing outright while the throttle is closed.

    A throttled attempt is not checked at all (so it cannot confirm a guess) and is
    not counted (so waiting out the window is enough to try again).
    """
    now = now or utcnow()
    username = username.strip().lower()[:64]
    remote_addr = (remote_addr or "unknown")[:64]
    wait = _throttle_wait(session, username, remote_addr, now)
    if wait > 0:
        log.warning("sign-in throttled for %r from %s (%d s)", username, remote_addr, wait)
        return SignIn(None, throttled=True, retry_after_s=wait)
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.password_hash:
        verify_password(_dummy_hash(), password)
        ok = False
    else:
        ok = verify_password(user.password_hash, password)
    if not ok or user is None:
        session.execute(delete(SignInFailure)
                        .where(SignInFailure.created_at < now - SIGN_IN_WINDOW))
        session.add(SignInFailure(username=username, remote_addr=remote_addr, created_at=now))
        session.flush()
        log.info("failed sign-in for %r from %s", username, remote_addr)
        return SignIn(None)
    session.execute(delete(SignInFailure).where(SignInFailure.username == username))
    if user.password_hash and _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    session.flush()
    return SignIn(user.id)


# --- Connected apps and Remove access -----------------------------------------------------------


def scope_words(scope: str) -> list[str]:
    """What each scope lets an app do, in the consent screen's words."""
    return [SCOPES[s] for s in ordered_scopes(split_scopes(scope))]


@dataclass(frozen=True)
class ConnectedApp:
    """One row of the creator's connected-apps page."""

    app_id: int
    client_key: str
    name: str
    developer: str
    scopes: list[str]
    granted_at: datetime
    last_used_at: datetime | None
    sounds_added: int

    @property
    def permissions(self) -> list[str]:
        return [SCOPES[s] for s in self.scopes]


def connected_apps(session: Session, user_id: int, now: datetime | None = None) \
        -> list[ConnectedApp]:
    """Apps holding an active consent from the creator, with what they may do.

    The permissions shown are the consent's scopes plus those of any live token, so
    the page never understates what an app can still do.
    """
    now = now or utcnow()
    consents = session.execute(
        select(Consent, App).join(App, App.id == Consent.app_id)
        .where(Consent.user_id == user_id, Consent.revoked_at.is_(None))
        .order_by(Consent.granted_at.desc())).all()
    found = []
    for consent, app in consents:
        tokens = session.execute(select(Token.scope, Token.last_used_at).where(
            Token.user_id == user_id, Token.app_id == app.id)).all()
        live_scopes = session.scalars(select(Token.scope).where(
            Token.user_id == user_id, Token.app_id == app.id, Token.revoked_at.is_(None),
            (Token.expires_at > now) | (Token.refresh_expires_at > now))).all()
        scopes = ordered_scopes([*split_scopes(consent.scope),
                                 *(s for scope in live_scopes for s in split_scopes(scope))])
        used = [t.last_used_at for t in tokens if t.last_used_at is not None]
        sounds = session.scalar(select(func.count(Sound.id)).where(
            Sound.owner_id == user_id, Sound.app_id == app.id)) or 0
        found.append(ConnectedApp(app.id, app.client_key, app.name, app.developer.name, scopes,
                                  consent.granted_at, max(used, default=None), sounds))
    return found


@dataclass(frozen=True)
class RemovedAccess:
    """What Remove access did; ``webhook_delivery_id`` is to be woken after commit."""

    app_name: str
    revoked_tokens: int
    revoked_codes: int
    failed_uploads: list[str]
    webhook_delivery_id: int | None


def remove_access(session: Session, user_id: int, client_key: str, *, secret_key: str,
                  reason: str = "user disconnected") -> RemovedAccess | None:
    """Revoke an app's consent, tokens and codes for one creator in one transaction.

    The consent row is updated first: the token and refresh grants take the same row
    lock before they issue anything (see ``soundkit.grants.lock_consent``), so a code
    exchange racing this removal either finishes before it (and its tokens are revoked
    here) or finds the consent gone. Unfinished uploads of that app for the creator
    fail with ``auth_removed`` and the app gets an ``authorization.removed`` webhook.
    Returns None if the app was not connected (a repeated click changes nothing).
    """
    app = session.scalar(select(App).where(App.client_key == client_key))
    if app is None:
        return None
    now = utcnow()
    locked = session.execute(
        update(Consent).where(Consent.user_id == user_id, Consent.app_id == app.id,
                              Consent.revoked_at.is_(None))
        .values(revoked_at=now).execution_options(synchronize_session=False))
    if locked.rowcount != 1:  # type: ignore[attr-defined]
        return None
    granted_at = session.execute(select(Consent.granted_at).where(
        Consent.user_id == user_id, Consent.app_id == app.id)).scalar_one()
    tokens = session.execute(
        update(Token).where(Token.user_id == user_id, Token.app_id == app.id,
                            Token.revoked_at.is_(None))
        .values(revoked_at=now).execution_options(synchronize_session=False))
    codes = session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.user_id == user_id, AuthorizationCode.app_id == app.id,
               AuthorizationCode.used_at.is_(None), AuthorizationCode.revoked_at.is_(None))
        .values(revoked_at=now).execution_options(synchronize_session=False))
    unfinished = session.scalars(select(Upload.id).where(
        Upload.user_id == user_id, Upload.app_id == app.id,
        Upload.status.in_(jobs.UNFINISHED_STATUSES))).all()
    failed = [upload_id for upload_id in unfinished
              if jobs.fail(session, upload_id, FailReason.AUTH_REMOVED,
                           "the creator removed the app's access", secret_key=secret_key)]
    dedupe_key = f"authorization.removed:{app.id}:{user_id}:{granted_at.timestamp():.6f}"
    webhooks.queue_event(session, app, user_id, "authorization.removed", {"reason": reason},
                         dedupe_key=dedupe_key, secret_key=secret_key)
    delivery_id = session.scalar(select(WebhookDelivery.id).where(
        WebhookDelivery.dedupe_key == dedupe_key))
    session.flush()
    log.info("creator %s removed access of app %s: %d tokens, %d codes, %d uploads",
             user_id, app.client_key, tokens.rowcount, codes.rowcount,  # type: ignore[attr-defined]
             len(failed))
    return RemovedAccess(app.name, tokens.rowcount, codes.rowcount,  # type: ignore[attr-defined]
                         failed, delivery_id)
