"""Login Kit's HTTP endpoints: authorize (with the consent page), token, revoke,
introspect, and user info.

The authorization endpoint checks the app and the redirect URI itself before Authlib
sees the request, and answers any problem with them with an error *page*: a
redirect may only ever go to a URI registered for that app. (Authlib would also
refuse, but it builds its error text from the submitted URI and raises
``ValueError`` for some characters in it, which would be a 500.)
"""

from __future__ import annotations

import logging
from typing import Any

from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Response, current_app, redirect, render_template, request
from sqlalchemy import select
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as BaseResponse

from api.auth import caller, public, require_scopes
from api.envelope import ApiError, envelope
from api.oauth.server import GrantUser, LoginKitServer, OAuthClient, clean_identifier
from api.services import services
from api.web.signin import current_user, login_url
from soundkit import accounts
from soundkit.models import App, Consent, User
from soundkit.security import open_id, union_id

log = logging.getLogger(__name__)

bp = Blueprint("oauth", __name__)

USER_FIELDS = ("open_id", "union_id", "avatar_url", "display_name")


def login_kit() -> LoginKitServer:
    found: LoginKitServer = current_app.extensions["login_kit"]
    return found


def _error_page(error: str, description: str, status: int = 400) -> tuple[str, int]:
    return render_template("oauth_error.html", error=error, description=description), status


def _conflicting_ids(params: MultiDict[str, str]) -> bool:
    keys, ids = params.getlist("client_key"), params.getlist("client_id")
    return bool(keys and ids and keys != ids)


def _check_app_and_redirect(params: MultiDict[str, str]) -> tuple[str, str] | None:
    """(error, description) when the app or redirect URI is unknown; None if both are fine."""
    if _conflicting_ids(params) or len(params.getlist("client_key")) > 1 \
            or len(params.getlist("client_id")) > 1:
        return "invalid_request", "The request names its app (client_key) more than once."
    raw_id = params.get("client_key") or params.get("client_id")
    if not raw_id:
        return "invalid_request", "The request does not say which app is asking (client_key)."
    client_key = clean_identifier(raw_id)
    client = login_kit().query_client(client_key) if client_key else None
    if client is None:
        return "invalid_client", "No app with this client key is registered."
    redirect_uris = params.getlist("redirect_uri")
    if not redirect_uris:
        return "invalid_request", "The request has no redirect_uri."
    if len(redirect_uris) > 1 or not client.check_redirect_uri(redirect_uris[0]):
        return ("invalid_request",
                "The redirect URI is not one registered for this app, so Soundkit will not "
                "send you there.")
    return None


def _already_granted(user_id: int, app_id: int, offered: list[str]) -> bool:
    with services().db.session() as session:
        scope = session.scalar(select(Consent.scope).where(
            Consent.user_id == user_id, Consent.app_id == app_id, Consent.revoked_at.is_(None)))
    return scope is not None and set(offered) <= set(accounts.split_scopes(scope))


def _consent_page(client: OAuthClient, offered: list[str], redirect_uri: str) -> str:
    from urllib.parse import urlsplit

    scopes = [{"name": s, "words": accounts.SCOPES[s],
               "required": s in accounts.REQUIRED_SCOPES} for s in offered]
    return render_template("consent.html", client=client, scopes=scopes,
                           action=request.full_path,
                           destination=urlsplit(redirect_uri).netloc)


def _response_type_error(params: MultiDict[str, str]) -> OAuth2Error | None:
    """Our own check of ``response_type``, sent back to the (validated) redirect URI.

    Authlib builds its ``unsupported_response_type`` error with its arguments swapped,
    so the submitted value becomes the description (and a quote or a non-ASCII
    character in it raises ``ValueError``); this check runs first instead.
    """
    values = [v for v in params.getlist("response_type") if v]
    if values == ["code"]:
        return None
    if not values or len(values) > 1:
        error, description = "invalid_request", "Send response_type=code exactly once."
    else:
        error, description = "unsupported_response_type", "Only response_type=code is supported."
    return OAuth2Error(description, error=error, state=params.get("state"),
                       redirect_uri=params.get("redirect_uri"))


@bp.route("/v2/auth/authorize/", methods=["GET", "POST"])
@public
def authorize() -> Any:
    """Sign in if needed, then consent (or approve at once), then redirect with a code."""
    problem = _check_app_and_redirect(request.args)
    if problem is not None:
        return _error_page(*problem)
    server, user = login_kit(), current_user()
    if (refused := _response_type_error(request.args)) is not None:
        return server.handle_error_response(None, refused)
    try:
        grant = server.get_consent_grant(end_user=user)
    except OAuth2Error as error:
        if error.redirect_uri:  # validated: registered for this app
            return server.handle_error_response(None, error)
        return _error_page(error.error or "invalid_request", error.get_error_description())
    if user is None:
        return redirect(login_url(request.full_path))
    client: OAuthClient = grant.request.client
    offered = accounts.split_scopes(grant.request.scope)
    if request.method == "POST":
        decision = request.form.get("decision")
        if decision == "cancel":
            return server.create_authorization_response(grant=grant, grant_user=None)
        if decision != "authorize":
            return _error_page("invalid_request", "Choose Authorize or Cancel.")
        chosen = frozenset(request.form.getlist("allow"))
        dropped = [s for s in offered if s in accounts.REQUIRED_SCOPES and s not in chosen]
        if dropped:
            return _error_page("invalid_request",
                               f"{accounts.SCOPES[dropped[0]]} is required by this app and "
                               "cannot be turned off.")
        log.info("creator %s authorized %s for %s", user.id, client.client_key,
                 sorted(chosen.intersection(offered)))
        return server.create_authorization_response(grant=grant,
                                                    grant_user=GrantUser(user.id, chosen))
    if request.args.get("disable_auto_auth") != "1" and _already_granted(user.id, client.id,
                                                                         offered):
        return server.create_authorization_response(grant=grant, grant_user=GrantUser(user.id))
    return _consent_page(client, offered, grant.redirect_uri)


def _oauth_endpoint(run: Any) -> BaseResponse:
    """Run an Authlib endpoint; errors raised outside its own handling become RFC 6749 JSON."""
    server = login_kit()
    if _conflicting_ids(request.form):
        conflict = OAuth2Error("Send client_key or client_id, not two different values.",
                               error="invalid_request")
        refused: BaseResponse = server.handle_error_response(None, conflict)
        return refused
    try:
        response: BaseResponse = run(server)
    except OAuth2Error as error:
        response = server.handle_error_response(None, error)
    return response


@bp.post("/v2/oauth/token/")
@public
def token() -> BaseResponse:
    """``authorization_code`` and ``refresh_token`` grants (client auth: body or Basic)."""
    return _oauth_endpoint(lambda server: server.create_token_response())


@bp.post("/v2/oauth/revoke/")
@public
def revoke() -> BaseResponse:
    """RFC 7009: 200 whether or not the token existed."""
    return _oauth_endpoint(lambda server: server.create_endpoint_response("revocation"))


@bp.post("/v2/oauth/introspect/")
@public
def introspect() -> BaseResponse:
    """RFC 7662, for an app's own tokens."""
    return _oauth_endpoint(lambda server: server.create_endpoint_response("introspection"))


@bp.get("/v2/user/info/")
@require_scopes("user.info.basic")
def user_info() -> Response:
    """The creator as this app may see them; never the username."""
    raw = request.args.get("fields", "")
    fields = [f for f in raw.replace(" ", ",").split(",") if f] or list(USER_FIELDS)
    unknown = [f for f in fields if f not in USER_FIELDS]
    if unknown:
        raise ApiError("invalid_params", f"unknown field(s): {', '.join(unknown[:5])[:200]}; "
                                         f"choose from {', '.join(USER_FIELDS)}")
    who, secret = caller(), services().settings.secret_key
    with services().db.session() as session:
        user, app = session.get(User, who.user_id), session.get(App, who.app_id)
        if user is None or app is None:
            raise ApiError("access_token_invalid", "the creator or the app no longer exists")
        values = {"open_id": open_id(secret, app.client_key, user.id),
                  "union_id": union_id(secret, app.developer_id, user.id),
                  "avatar_url": user.avatar_url or "",
                  "display_name": user.display_name}
    return envelope({"user": {f: values[f] for f in dict.fromkeys(fields)}})
