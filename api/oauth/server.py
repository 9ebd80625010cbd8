"""Login Kit on Authlib: the authorization server, its two grants and two endpoints.

Authlib does the protocol (parameter checks, client authentication, PKCE
verification, error shapes); the subclasses here close the gaps listed in the
design notes:

- PKCE is S256 only: ``plain`` and a challenge without a method are refused, and
  public apps must send a challenge at the authorization endpoint already.
- The creator's consent choices are applied where the code is saved, not by
  editing ``grant.request.scope`` (Authlib re-validates the request from its
  parameters, so such an edit would be lost).
- Codes and refresh tokens are spent by compare-and-set (``soundkit.grants``): a
  code presented twice revokes every token it produced, a rotated refresh token
  presented again revokes its family.
- Lifetimes are ours (24 h / 365 days) and tokens are stored hashed; Authlib's
  token generator and ``save_token`` are bypassed because issuing must happen in
  the same transaction as spending the code.

Apps may call the client identifier ``client_key`` (TikTok style) or ``client_id``,
and write scopes comma- or space-separated; :class:`LoginKitRequest` maps both onto
what Authlib reads. The granted scopes go back in the separator the app used, so a
TikTok-style client and an RFC 6749 library each read the list they expect.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    AccessDeniedError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Payload,
    OAuth2Request,
)
from authlib.oauth2.rfc6749 import grants as authlib_grants
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import Flask, Response, json
from flask import request as flask_request
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from api.envelope import log_id
from api.services import services
from soundkit import accounts, grants
from soundkit.models import App, User, utcnow
from soundkit.security import hash_token, open_id

log = logging.getLogger(__name__)

SECRET_METHODS = ["client_secret_basic", "client_secret_post"]
CLIENT_AUTH_METHODS = [*SECRET_METHODS, "none"]
SUPPORTED_GRANTS = ("authorization_code", "refresh_token")
#: Longest identifier looked up in the database; anything longer cannot exist.
MAX_IDENTIFIER = 200


def clean_identifier(value: object) -> str | None:
    """An identifier safe to put in a query (PostgreSQL refuses NUL characters)."""
    if not isinstance(value, str) or not value or len(value) > MAX_IDENTIFIER or "\x00" in value:
        return None
    return value


def scope_separator(raw: str | None) -> str:
    """Comma (TikTok style, our default) unless the app wrote its scopes space-separated."""
    raw = (raw or "").strip()
    return " " if raw and "," not in raw and " " in raw else ","


# --- Models as Authlib sees them ------------------------------------------------------------------


@dataclass(frozen=True)
class OAuthClient:
    """An app, detached from its session, with Authlib's ``ClientMixin`` methods."""

    id: int
    client_key: str
    name: str
    developer_id: int
    developer: str
    is_public: bool
    redirect_uris: tuple[str, ...]
    allowed_scopes: tuple[str, ...]
    client_secret_hash: str | None

    @classmethod
    def of(cls, app: App) -> OAuthClient:
        return cls(app.id, app.client_key, app.name, app.developer_id, app.developer.name,
                   app.is_public, tuple(app.redirect_uris),
                   tuple(accounts.split_scopes(app.allowed_scopes)), app.client_secret_hash)

    def get_client_id(self) -> str:
        return self.client_key

    def get_default_redirect_uri(self) -> None:
        """None: every request must name its redirect URI (API.md), none is implied."""
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """requested ∩ allowed; no scope at all means the required ones. None → invalid_scope."""
        requested = accounts.split_scopes(scope) or sorted(accounts.REQUIRED_SCOPES)
        granted = [s for s in accounts.ordered_scopes(requested) if s in self.allowed_scopes]
        return " ".join(granted) if granted else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """Exact string comparison: no prefix, case, port or trailing-slash leniency."""
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if not self.client_secret_hash:
            return False
        return hmac.compare_digest(hash_token(client_secret), self.client_secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.is_public:  # no secret: may revoke its tokens, may not introspect
            return method == "none" and endpoint != "introspection"
        return method in SECRET_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in SUPPORTED_GRANTS


@dataclass(frozen=True)
class GrantUser:
    """The creator approving a request, and the scopes they left switched on.

    ``chosen`` None means "everything offered" (an automatic approval).
    """

    id: int
    chosen: frozenset[str] | None = None


@dataclass(frozen=True)
class CodeView:
    """An authorization code as Authlib's grant and ``CodeChallenge`` read it."""

    record: grants.CodeRecord

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return " ".join(accounts.split_scopes(self.record.scope))

    @property
    def code_challenge(self) -> str | None:
        return self.record.code_challenge

    @property
    def code_challenge_method(self) -> str | None:
        return self.record.code_challenge_method


@dataclass(frozen=True)
class TokenView:
    """A token row as Authlib's ``TokenMixin``; ``kind`` is which of its two strings matched."""

    record: grants.TokenRecord
    kind: str

    def check_client(self, client: OAuthClient) -> bool:
        return self.record.app_id == client.id

    def get_scope(self) -> str:
        return " ".join(accounts.split_scopes(self.record.scope))

    def _expires_at(self) -> datetime:
        if self.kind == "refresh_token":
            return self.record.refresh_expires_at or self.record.expires_at
        return self.record.expires_at

    def get_expires_in(self) -> int:
        return max(0, int((self._expires_at() - utcnow()).total_seconds()))

    def is_expired(self) -> bool:
        return self._expires_at() <= utcnow()

    def is_revoked(self) -> bool:
        if self.record.revoked_at is not None:
            return True
        return self.kind == "refresh_token" and self.record.refreshed_at is not None


# --- Requests ----------------------------------------------------------------------------------


class LoginKitPayload(OAuth2Payload):  # type: ignore[misc]
    """The parameters Authlib reads, from one source only (query *or* body, never both)."""

    def __init__(self, params: MultiDict[str, str]) -> None:
        self._params = params

    @property
    def data(self) -> MultiDict[str, str]:
        return self._params

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {key: self._params.getlist(key) for key in self._params}


def normalise(params: MultiDict[str, str]) -> MultiDict[str, str]:
    """``client_key`` also answers to ``client_id``; scopes become space-separated."""
    out: MultiDict[str, str] = MultiDict(list(params.items(multi=True)))
    if "client_id" not in out:
        for value in params.getlist("client_key"):
            out.add("client_id", value)
    if "scope" in out:
        out.setlist("scope", [" ".join(accounts.split_scopes(v)) for v in out.getlist("scope")])
    return out


class LoginKitRequest(OAuth2Request):  # type: ignore[misc]
    """A Flask request for Authlib.

    The authorization endpoint reads only the query string: the consent form's own
    fields (CSRF token, toggles, decision) then can never collide with an OAuth
    parameter. The token, revocation and introspection endpoints read only the
    form body, as RFC 6749 requires. The transport check runs against the public
    URL, which is what clients actually use (https, or loopback in development).
    """

    def __init__(self, public_url: str) -> None:
        req = flask_request
        super().__init__(method=req.method, uri=public_url + req.full_path, headers=req.headers)
        self._request = req
        source = req.args if req.path.endswith("/authorize/") else req.form
        self._params = normalise(source)
        self.payload = LoginKitPayload(self._params)

    @property
    def args(self) -> Any:
        return self._request.args

    @property
    def form(self) -> MultiDict[str, str]:
        return self._params


# --- Grants and endpoints -----------------------------------------------------------------------


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only, and required of public apps from the first request on."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        challenge, method = data.get("code_challenge"), data.get("code_challenge_method")
        if challenge is None and method is None:
            if grant.request.client.is_public:
                raise InvalidRequestError("PKCE is required: send code_challenge with "
                                          "code_challenge_method=S256")
            return
        if method != "S256":
            raise InvalidRequestError("Unsupported code_challenge_method: only S256 is accepted")
        super().validate_code_challenge(grant, redirect_uri)


def _db_session() -> Any:
    return services().db.session()


def token_response(client: OAuthClient, user_id: int, issued: grants.IssuedTokens) \
        -> dict[str, Any]:
    """The token endpoint's answer (API.md), with the creator's ``open_id`` for this app."""
    return {
        "access_token": issued.access_token,
        "expires_in": issued.expires_in,
        "open_id": open_id(services().settings.secret_key, client.client_key, user_id),
        "refresh_token": issued.refresh_token,
        "refresh_expires_in": issued.refresh_expires_in,
        "scope": issued.scope,
        "token_type": "Bearer",
    }


class AuthorizationCodeGrant(authlib_grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def create_authorization_response(self, redirect_uri: str, grant_user: GrantUser | None) \
            -> tuple[int, str, list[tuple[str, str]]]:
        """Save the code for requested ∩ allowed ∩ chosen, and redirect with ``scopes``."""
        if not grant_user:
            raise AccessDeniedError(redirect_uri=redirect_uri)
        request = self.request
        client: OAuthClient = request.client
        offered = accounts.split_scopes(request.scope)
        chosen = grant_user.chosen
        granted = [s for s in offered if chosen is None or s in chosen]
        required = [s for s in offered if s in accounts.REQUIRED_SCOPES]
        if not granted or not set(required) <= set(granted):
            raise AccessDeniedError(redirect_uri=redirect_uri)
        request.user = grant_user
        separator = scope_separator(flask_request.args.get("scope"))
        data = request.payload.data
        with _db_session() as session:
            user = session.get(User, grant_user.id)
            app = session.get(App, client.id)
            if user is None or app is None:
                raise AccessDeniedError(redirect_uri=redirect_uri)
            accounts.grant_consent(session, user, app, granted)
            code = grants.issue_code(
                session, app_id=client.id, user_id=grant_user.id, redirect_uri=redirect_uri,
                scope=separator.join(granted), code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"))
        params = [("code", code), ("scopes", ",".join(granted))]
        if request.payload.state:
            params.append(("state", request.payload.state))
        return 302, "", [("Location", add_params_to_uri(redirect_uri, params))]

    def query_authorization_code(self, code: str, client: OAuthClient) -> CodeView | None:
        raw = clean_identifier(code)
        if raw is None:
            return None
        with _db_session() as session:
            record = grants.find_code(session, raw)
            if record is None or record.app_id != client.id:
                return None
            if record.used_at is not None:  # replay: RFC 9700 says revoke what it produced
                revoked = grants.revoke_family(session, record.family_id)
                log.warning("authorization code %s presented again; revoked %d token(s)",
                            record.id, revoked)
                return None
        if record.revoked_at is not None or record.expires_at <= utcnow():
            return None
        return CodeView(record)

    def authenticate_user(self, authorization_code: CodeView) -> GrantUser:
        return GrantUser(authorization_code.record.user_id)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """Spend the code and issue the tokens in one transaction.

        Under the consent row's lock, the ``UPDATE … WHERE used_at IS NULL`` lets one
        of any number of concurrent exchanges through; a loser finds the winner's
        tokens committed and revokes them.
        """
        client: OAuthClient = self.request.client
        record: grants.CodeRecord = self.request.authorization_code.record
        issued: grants.IssuedTokens | None = None
        with _db_session() as session:
            if not grants.lock_consent(session, record.user_id, record.app_id):
                outcome = "the creator removed this app's access"
            elif not grants.claim_code(session, record.id):
                revoked = grants.revoke_family(session, record.family_id)
                log.warning("authorization code %s used concurrently; revoked %d token(s)",
                            record.id, revoked)
                outcome = "the code was already used"
            else:
                issued = grants.issue_tokens(session, app_id=client.id,
                                             user_id=record.user_id, scope=record.scope,
                                             family_id=record.family_id)
                outcome = "ok"
        if issued is None:
            raise InvalidGrantError(f"Invalid 'code': {outcome}.")
        self.request.user = GrantUser(record.user_id)
        return 200, token_response(client, record.user_id, issued), self.TOKEN_RESPONSE_HEADER


class RefreshTokenGrant(authlib_grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> TokenView | None:
        raw = clean_identifier(refresh_token)
        client: OAuthClient | None = self.request.client
        if raw is None or client is None:
            return None
        with _db_session() as session:
            found = grants.find_token(session, raw, "refresh_token")
            if found is None or found[0].app_id != client.id:
                return None
            record = found[0]
            if record.refreshed_at is not None and record.revoked_at is None:
                revoked = grants.revoke_family(session, record.family_id)
                log.warning("rotated refresh token of family %s presented again; revoked %d "
                            "token(s)", record.family_id, revoked)
                return None
        view = TokenView(record, "refresh_token")
        return None if view.is_revoked() or view.is_expired() else view

    def authenticate_user(self, refresh_token: TokenView) -> GrantUser:
        return GrantUser(refresh_token.record.user_id)

    def _validate_token_scope(self, token: TokenView) -> None:
        """A refresh may ask for less than was granted, never for more.

        Client libraries re-send the scope they first asked for on every refresh
        (requests-oauthlib does), even after the creator switched an optional one off
        on the consent page. Those scopes are left out, not refused: the new token
        carries ``asked ∩ granted`` and its ``scope`` says so (RFC 6749 §5.1). Only a
        scope name that does not exist, or nothing in common, is ``invalid_scope``.
        """
        asked = accounts.split_scopes(self.request.payload.scope)
        if not asked:
            return
        if any(scope not in accounts.SCOPES for scope in asked):
            raise InvalidScopeError()
        if not set(asked) & set(accounts.split_scopes(token.record.scope)):
            raise InvalidScopeError()

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """Rotate: spend the old refresh token and issue a new pair in the same family."""
        client: OAuthClient = self.request.client
        record: grants.TokenRecord = self.request.refresh_token.record
        asked = set(accounts.split_scopes(self.request.payload.scope))
        if asked:  # never wider than the grant (see _validate_token_scope)
            granted = [s for s in accounts.split_scopes(record.scope) if s in asked]
            scope = scope_separator(flask_request.form.get("scope")).join(
                accounts.ordered_scopes(granted))
        else:
            scope = record.scope
        issued: grants.IssuedTokens | None = None
        with _db_session() as session:
            if not grants.lock_consent(session, record.user_id, record.app_id):
                outcome = "the creator removed this app's access"
            elif not grants.rotate(session, record.id):
                grants.revoke_family(session, record.family_id)
                log.warning("refresh token of family %s used concurrently; family revoked",
                            record.family_id)
                outcome = "the refresh token was already used"
            else:
                issued = grants.issue_tokens(session, app_id=client.id, user_id=record.user_id,
                                             scope=scope, family_id=record.family_id)
                outcome = "ok"
        if issued is None:
            raise InvalidGrantError(f"Invalid 'refresh_token': {outcome}.")
        self.request.user = GrantUser(record.user_id)
        return 200, token_response(client, record.user_id, issued), self.TOKEN_RESPONSE_HEADER


def _query_token(token_string: str, token_type_hint: str | None) -> TokenView | None:
    """RFC 7009/7662: the hint is tried first, then the other kind."""
    raw = clean_identifier(token_string)
    if raw is None:
        return None
    with _db_session() as session:
        found = grants.find_token(session, raw, token_type_hint) or grants.find_token(session, raw)
    return TokenView(*found) if found else None


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009. Revoking either token of a grant ends the whole family: the app signed out."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return _query_token(token_string, token_type_hint)

    def revoke_token(self, token: TokenView, request: Any) -> None:
        with _db_session() as session:
            grants.revoke_family(session, token.record.family_id)


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662, for confidential clients and about their own tokens only."""

    CLIENT_AUTH_METHODS = SECRET_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return _query_token(token_string, token_type_hint)

    def check_permission(self, token: TokenView, client: OAuthClient, request: Any) -> bool:
        return token.check_client(client)

    def introspect_token(self, token: TokenView) -> dict[str, Any]:
        client: OAuthClient = self.server.query_client_by_id(token.record.app_id)
        subject = open_id(services().settings.secret_key, client.client_key,
                          token.record.user_id)
        return {
            "active": True,
            "client_id": client.client_key,
            "scope": token.get_scope(),
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
            "exp": int(token._expires_at().timestamp()),
            "iat": int(token.record.issued_at.timestamp()),
            "sub": subject,
            "open_id": subject,
        }


class LoginKitServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's Flask server bound to our database, requests and error shape."""

    def __init__(self) -> None:
        super().__init__()
        self.scopes_supported = list(accounts.SCOPES)

    def init_app(self, app: Flask, query_client: Any = None, save_token: Any = None) -> None:
        super().init_app(app, self.query_client, self.save_token)
        self.scopes_supported = list(accounts.SCOPES)
        self.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True)])
        self.register_grant(RefreshTokenGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)

    def query_client(self, client_id: str) -> OAuthClient | None:
        client_key = clean_identifier(client_id)
        if client_key is None:
            return None
        with _db_session() as session:
            app = session.scalar(select(App).where(App.client_key == client_key))
            return OAuthClient.of(app) if app is not None else None

    def query_client_by_id(self, app_id: int) -> OAuthClient:
        with _db_session() as session:
            app = session.get(App, app_id)
            assert app is not None
            return OAuthClient.of(app)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        raise RuntimeError("tokens are saved by the grants, inside the exchange's transaction")

    def create_oauth2_request(self, request: Any) -> LoginKitRequest:
        return LoginKitRequest(services().settings.public_url)

    def handle_response(self, status_code: int, payload: Any, headers: Any) -> Response:
        """Flat JSON as RFC 6749 wants; errors also carry the request's ``log_id``."""
        if isinstance(payload, dict):
            if "error" in payload:
                payload = {**payload, "log_id": log_id()}
            payload = json.dumps(payload)
        return Response(payload, status=status_code, headers=headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No listeners: the audit trail is the log lines written by the grants."""

