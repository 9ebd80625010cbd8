"""Bearer-token protection of the API, failing closed.

Every view of an API blueprint declares what it needs with :func:`require_scopes`
(or :func:`public`). A ``before_request`` hook refuses any view under ``/v2/`` that
declared nothing, so a new endpoint someone forgot to protect is unreachable
instead of open.

Errors follow RFC 6750 (API.md): no token → 401 and a bare challenge; a bad,
expired or revoked token → 401 ``error="invalid_token"``; a missing scope → 403
``error="insufficient_scope"`` naming the scope. Tokens in the query string are
ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, current_app, g, request
from sqlalchemy import select, update

from api.envelope import ApiError
from api.services import services
from soundkit.models import Consent, Token, utcnow
from soundkit.security import hash_token

REALM = "soundkit"
F = TypeVar("F", bound=Callable[..., Any])

#: Record ``last_used_at`` at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the app and the creator a token speaks for."""

    token_id: int
    app_id: int
    client_key: str
    user_id: int
    scopes: frozenset[str]


def _challenge(error: str | None = None, description: str | None = None,
               scope: str | None = None) -> str:
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _unauthorized(description: str | None) -> ApiError:
    error = "invalid_token" if description else None
    return ApiError("access_token_invalid", description or "missing access token",
                    headers={"WWW-Authenticate": _challenge(error, description)})


def authenticate() -> Caller:
    """The caller of the current request, or an RFC 6750 401."""
    raw = _bearer_token()
    if raw is None:
        raise _unauthorized(None)
    now = utcnow()
    with services().db.session() as session:
        token = session.scalar(select(Token).where(Token.access_token_hash == hash_token(raw)))
        if token is None or not token.is_active(now):
            raise _unauthorized("The access token is invalid, expired or revoked.")
        consent_revoked = session.scalar(select(Consent.revoked_at).where(
            Consent.user_id == token.user_id, Consent.app_id == token.app_id))
        if consent_revoked is not None:
            raise _unauthorized("The access token is invalid, expired or revoked.")
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            session.execute(update(Token).where(Token.id == token.id).values(last_used_at=now))
        return Caller(token.id, token.app_id, token.app.client_key, token.user_id, token.scopes)


def require_scopes(*any_of: str) -> Callable[[F], F]:
    """Protect a view: the token must carry at least one of ``any_of``."""
    if not any_of:
        raise ValueError("require_scopes needs at least one scope")

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            caller = authenticate()
            if not caller.scopes.intersection(any_of):
                raise ApiError(
                    "scope_not_authorized",
                    f"this endpoint needs the scope {' or '.join(any_of)}",
                    headers={"WWW-Authenticate": _challenge(
                        "insufficient_scope", None, " ".join(any_of))})
            g.caller = caller
            return view(*args, **kwargs)

        wrapper.required_scopes = frozenset(any_of)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def public(view: F) -> F:
    """Mark a ``/v2/`` view as deliberately reachable without a bearer token."""
    view.required_scopes = frozenset()  # type: ignore[attr-defined]
    return view


def caller() -> Caller:
    found: Caller = g.caller
    return found


def declared_scopes(app: Flask, endpoint: str) -> frozenset[str] | None:
    view = app.view_functions.get(endpoint)
    return getattr(view, "required_scopes", None)


def init_app(app: Flask) -> None:
    @app.before_request
    def _fail_closed() -> None:
        if not request.path.startswith("/v2/") or request.endpoint is None:
            return
        if declared_scopes(current_app, request.endpoint) is None:
            raise ApiError("scope_not_authorized", "this endpoint declares no scope")
