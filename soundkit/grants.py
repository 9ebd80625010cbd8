"""Login Kit's records: authorization codes and token families, changed by compare-and-set.

The OAuth wiring (``api/oauth``) decides *whether* a request may have a code or a
token; this module makes the database changes so that they hold under concurrency:

- a code is spent by ``UPDATE … WHERE used_at IS NULL``: of any number of
  simultaneous exchanges exactly one changes the row, and a later presentation is
  recognised as a replay and revokes every token minted from the code (RFC 9700);
- a refresh token is rotated the same way, and a rotated one coming back revokes
  its whole family;
- before issuing anything, the grant locks the creator's consent row with a no-op
  ``UPDATE`` (:func:`lock_consent`), the same row *Remove access* updates first, so
  the two serialise instead of racing.

Only hashes of codes and tokens are stored (``security.hash_token``).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from soundkit.accounts import ACCESS_TOKEN_TTL, REFRESH_TOKEN_TTL
from soundkit.models import AuthorizationCode, Consent, Token, utcnow
from soundkit.security import hash_token, new_token

log = logging.getLogger(__name__)

#: How long a code may wait to be exchanged (RFC 6749 recommends at most ten minutes).
CODE_TTL = timedelta(minutes=5)
ACCESS_PREFIX, REFRESH_PREFIX = "act.", "rft."


def new_family_id() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class CodeRecord:
    """A detached copy of an authorization code row (safe to use after the session)."""

    id: int
    app_id: int
    user_id: int
    redirect_uri: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None
    family_id: str
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: AuthorizationCode) -> CodeRecord:
        return cls(row.id, row.app_id, row.user_id, row.redirect_uri, row.scope,
                   row.code_challenge, row.code_challenge_method, row.family_id,
                   row.expires_at, row.used_at, row.revoked_at)


@dataclass(frozen=True)
class TokenRecord:
    """A detached copy of a token row."""

    id: int
    app_id: int
    user_id: int
    scope: str
    family_id: str
    issued_at: datetime
    expires_at: datetime
    refresh_expires_at: datetime | None
    refreshed_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: Token) -> TokenRecord:
        return cls(row.id, row.app_id, row.user_id, row.scope, row.family_id, row.issued_at,
                   row.expires_at, row.refresh_expires_at, row.refreshed_at, row.revoked_at)


@dataclass(frozen=True)
class IssuedTokens:
    """A freshly minted pair; the raw strings exist only here and in the response."""

    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    scope: str
    family_id: str


def issue_code(session: Session, *, app_id: int, user_id: int, redirect_uri: str, scope: str,
               code_challenge: str | None, code_challenge_method: str | None,
               now: datetime | None = None) -> str:
    """Store a new code (hashed) and return the raw value for the redirect."""
    now = now or utcnow()
    raw = new_token()
    session.add(AuthorizationCode(
        code_hash=hash_token(raw), app_id=app_id, user_id=user_id, redirect_uri=redirect_uri,
        scope=scope, code_challenge=code_challenge, code_challenge_method=code_challenge_method,
        family_id=new_family_id(), created_at=now, expires_at=now + CODE_TTL))
    session.flush()
    return raw


def find_code(session: Session, raw: str) -> CodeRecord | None:
    row = session.scalar(select(AuthorizationCode).where(
        AuthorizationCode.code_hash == hash_token(raw)))
    return CodeRecord.of(row) if row is not None else None


def lock_consent(session: Session, user_id: int, app_id: int) -> bool:
    """Take the creator/app consent row's write lock; False if there is no active consent.

    A no-op ``UPDATE`` rather than ``SELECT … FOR UPDATE`` so that it is also the
    transaction's first write on SQLite, which then waits for the database lock
    instead of failing later when a read snapshot turns out to be stale.
    """
    result = session.execute(
        update(Consent).where(Consent.user_id == user_id, Consent.app_id == app_id,
                              Consent.revoked_at.is_(None))
        .values(scope=Consent.scope).execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def claim_code(session: Session, code_id: int, now: datetime | None = None) -> bool:
    """Spend the code; True for exactly one caller, ever."""
    now = now or utcnow()
    result = session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.id == code_id, AuthorizationCode.used_at.is_(None),
               AuthorizationCode.revoked_at.is_(None), AuthorizationCode.expires_at > now)
        .values(used_at=now).execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def revoke_family(session: Session, family_id: str, now: datetime | None = None) -> int:
    """Revoke every token of a family (all descendants of one code); returns how many."""
    result = session.execute(
        update(Token).where(Token.family_id == family_id, Token.revoked_at.is_(None))
        .values(revoked_at=now or utcnow()).execution_options(synchronize_session=False))
    count: int = result.rowcount  # type: ignore[attr-defined]
    return count


def issue_tokens(session: Session, *, app_id: int, user_id: int, scope: str, family_id: str,
                 now: datetime | None = None) -> IssuedTokens:
    """Mint an access/refresh pair in ``family_id`` and store their hashes."""
    now = now or utcnow()
    access, refresh = new_token(ACCESS_PREFIX), new_token(REFRESH_PREFIX)
    session.add(Token(access_token_hash=hash_token(access), refresh_token_hash=hash_token(refresh),
                      app_id=app_id, user_id=user_id, scope=scope, family_id=family_id,
                      issued_by="oauth", issued_at=now, expires_at=now + ACCESS_TOKEN_TTL,
                      refresh_expires_at=now + REFRESH_TOKEN_TTL))
    session.flush()
    return IssuedTokens(access, refresh, int(ACCESS_TOKEN_TTL.total_seconds()),
                        int(REFRESH_TOKEN_TTL.total_seconds()), scope, family_id)


def find_token(session: Session, raw: str, kind: str | None = None) \
        -> tuple[TokenRecord, str] | None:
    """Look a raw token up as an access token, a refresh token, or (kind None) either.

    Returns the record and which kind matched (``access_token``/``refresh_token``).
    """
    digest = hash_token(raw)
    for which, column in (("access_token", Token.access_token_hash),
                          ("refresh_token", Token.refresh_token_hash)):
        if kind not in (None, which):
            continue
        row = session.scalar(select(Token).where(column == digest))
        if row is not None:
            return TokenRecord.of(row), which
    return None


def rotate(session: Session, token_id: int, now: datetime | None = None) -> bool:
    """Mark a refresh token used; True for exactly one caller.

    The old access token keeps working until it expires (requests in flight during
    a refresh must not fail); only its refresh token is spent.
    """
    now = now or utcnow()
    result = session.execute(
        update(Token)
        .where(Token.id == token_id, Token.refreshed_at.is_(None), Token.revoked_at.is_(None),
               Token.refresh_expires_at > now)
        .values(refreshed_at=now).execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
