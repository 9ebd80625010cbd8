"""Bearer-token protection of the API, failing closed.

Every view of an API blueprint declares what it needs with :func:`require_scopes`
(or :func:`public`). A ``before_request`` hook refuses any view under ``/v2/`` that
declared nothing, so a new endpoint someone forgot to protect is unreachable
instead of open.

Tokens are checked by Authlib's :class:`ResourceProtector` with a
:class:`BearerTokenValidator` over our hashed token table. Authlib's own error
responses are not the ones API.md promises (a missing header gives the
non-standard ``error="missing_authorization"``, a missing scope gives 403 with no
``WWW-Authenticate``), so :func:`require_scopes` catches its exceptions and answers
exactly as RFC 6750 says: no token → 401 and a bare challenge; a bad, expired or
revoked token → 401 ``error="invalid_token"``; a missing scope → 403
``error="insufficient_scope"`` naming the scope. Only the ``Authorization`` header
is read: tokens in the query string or the body are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2.rfc6749 import MissingAuthorizationError, UnsupportedTokenTypeError
from authlib.oauth2.rfc6750 import BearerTokenValidator, InsufficientScopeError, InvalidTokenError
from flask import Flask, current_app, g, request
from sqlalchemy import select, update

from api.envelope import ApiError
from api.services import services
from soundkit.models import App, Consent, Token, utcnow
from soundkit.security import hash_token

REALM = "soundkit"
F = TypeVar("F", bound=Callable[..., Any])

#: Record ``last_used_at`` at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
REJECTED = "The access token is invalid, expired or revoked."


@dataclass(frozen=True)
class Caller:
    """Who is calling: the app and the creator a token speaks for."""

    token_id: int
    app_id: int
    client_key: str
    user_id: int
    scopes: frozenset[str]

    # Authlib's TokenMixin, as far as the bearer validator uses it.
    def get_scope(self) -> str:
        return " ".join(sorted(self.scopes))

    def is_expired(self) -> bool:
        return False  # the look-up only returns live tokens

    def is_revoked(self) -> bool:
        return False


class TokenTableValidator(BearerTokenValidator):  # type: ignore[misc]
    """Finds an access token by its hash; only live tokens with a live consent count."""

    def authenticate_token(self, token_string: str) -> Caller | None:
        if len(token_string) > 200 or "\x00" in token_string:
            return None
        now = utcnow()
        with services().db.session() as session:
            row = session.execute(
                select(Token, App.client_key).join(App, App.id == Token.app_id)
                .where(Token.access_token_hash == hash_token(token_string))).first()
            if row is None:
                return None
            token, client_key = row
            if not token.is_active(now):
                return None
            consent_revoked = session.scalar(select(Consent.revoked_at).where(
                Consent.user_id == token.user_id, Consent.app_id == token.app_id))
            if consent_revoked is not None:
                return None
            if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
                session.execute(update(Token).where(Token.id == token.id)
                                .values(last_used_at=now))
            return Caller(token.id, token.app_id, client_key, token.user_id, token.scopes)


protector = ResourceProtector()
protector.register_token_validator(TokenTableValidator(realm=REALM))


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


def _unauthorized(description: str | None) -> ApiError:
    error = "invalid_token" if description else None
    return ApiError("access_token_invalid", description or "missing access token",
                    headers={"WWW-Authenticate": _challenge(error, description)})


def _insufficient(any_of: tuple[str, ...]) -> ApiError:
    return ApiError("scope_not_authorized",
                    f"this endpoint needs the scope {' or '.join(any_of)}",
                    headers={"WWW-Authenticate": _challenge("insufficient_scope", None,
                                                            " ".join(any_of))})


def authenticate(any_of: tuple[str, ...] = ()) -> Caller:
    """The caller of the current request (holding one of ``any_of``), or an RFC 6750 error."""
    try:
        found: Caller = protector.acquire_token(list(any_of))
    except (MissingAuthorizationError, UnsupportedTokenTypeError):
        raise _unauthorized(None) from None  # no Bearer credentials at all
    except InvalidTokenError:
        raise _unauthorized(REJECTED) from None
    except InsufficientScopeError:
        raise _insufficient(any_of) from None
    return found


def require_scopes(*any_of: str) -> Callable[[F], F]:
    """Protect a view: the token must carry at least one of ``any_of``."""
    if not any_of:
        raise ValueError("require_scopes needs at least one scope")

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.caller = authenticate(any_of)
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
