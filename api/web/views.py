"""Creator pages: sign in, sign out, connected apps with Remove access, the demo callback."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, flash, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from api.services import services
from api.web.signin import (
    current_user,
    end_session,
    login_required,
    safe_next,
    signed_in_user,
    start_session,
)
from soundkit import accounts

log = logging.getLogger(__name__)

bp = Blueprint("web", __name__)

Page = str | tuple[str, int] | tuple[str, int, dict[str, str]] | BaseResponse


def _landing() -> str:
    from api.web import home_url  # the nav lives on the app, set up by api.web.init_app

    return home_url(current_app)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Page:
    """Password sign-in. ``next`` (a same-site path) is where the creator was going."""
    next_path = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_user() is not None:
            return redirect(next_path or _landing())
        return render_template("login.html", next=next_path, username="", error=None)
    username = request.form.get("username", "").strip()[:64]
    password = request.form.get("password", "")
    if "\x00" in username or not username or not password:
        return render_template("login.html", next=next_path, username=username.strip("\x00"),
                               error="Enter your username and password."), 400
    with services().db.session() as session:
        outcome = accounts.sign_in(session, username, password[:1024],
                                   request.remote_addr or "unknown")
    if outcome.throttled:
        minutes = max(1, round(outcome.retry_after_s / 60))
        return render_template(
            "login.html", next=next_path, username=username,
            error=f"Too many failed sign-ins. Try again in about {minutes} minute"
                  f"{'s' if minutes != 1 else ''}."), \
            429, {"Retry-After": str(outcome.retry_after_s)}
    if outcome.user_id is None:
        return render_template("login.html", next=next_path, username=username,
                               error="Wrong username or password."), 401
    start_session(outcome.user_id)
    log.info("creator %s signed in", outcome.user_id)
    return redirect(next_path or _landing())


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Page:
    """GET asks for confirmation; the POST (with its CSRF token) signs out."""
    if request.method == "GET":
        if current_user() is None:
            return redirect("/login")
        return render_template("logout.html")
    end_session()
    flash("You are signed out.", "info")
    return redirect("/login")


@bp.get("/settings/apps")
@login_required
def connected_apps() -> Page:
    user = signed_in_user()
    with services().db.session() as session:
        apps = accounts.connected_apps(session, user.id)
    return render_template("connected_apps.html", apps=apps)


@bp.post("/settings/apps/<client_key>/remove")
@login_required
def remove_access(client_key: str) -> Page:
    """Revoke everything the app holds for this creator; wake the webhook after commit."""
    svc, user = services(), signed_in_user()
    with svc.db.session() as session:
        removed = accounts.remove_access(session, user.id, client_key[:64],
                                         secret_key=svc.settings.secret_key)
    if removed is None:
        flash("That app was not connected.", "info")
    else:
        if removed.webhook_delivery_id is not None:
            svc.dispatcher.wake_webhook(removed.webhook_delivery_id)
        flash(f"{removed.app_name} can no longer use your account.", "success")
    return redirect("/settings/apps")


@bp.get("/demo/callback")
def demo_callback() -> Page:
    """The bundled reference client's redirect target: shows what the app would receive."""
    return render_template(
        "demo_callback.html", code=request.args.get("code"), state=request.args.get("state"),
        scopes=request.args.get("scopes"), error=request.args.get("error"),
        error_description=request.args.get("error_description"),
        token_url=services().settings.public_url + "/v2/oauth/token/",
        redirect_uri=services().settings.public_url + "/demo/callback")
