"""Server-rendered pages for people: sign-in, connected apps (and, later, library and ops).

``init_app`` sets up what every page shares, so a page added by another blueprint
gets it without doing anything:

- CSRF protection (Flask-WTF) on every cookie-authenticated form. It is checked in
  one ``before_request`` hook for every unsafe method *except* the ``/v2/`` API
  endpoints, which authenticate with bearer tokens or client credentials and never
  read the session cookie; the Login Kit consent form (``/v2/auth/authorize/``) is
  a cookie-authenticated form and is checked.
- The session cookie's name, lifetime and flags.
- Security headers on HTML pages (no framing: a consent page inside another
  site's frame is a clickjacking target).
- The navigation: blueprints add their pages with :func:`add_nav_item`; the first
  item is where a creator lands after signing in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Flask, Response, render_template, request, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect

from api.web.signin import SignedIn, current_user
from api.web.views import bp

__all__ = ["add_nav_item", "bp", "home_url", "init_app"]

csrf = CSRFProtect()
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Cookie-authenticated endpoints under /v2/ (everything else there uses tokens).
V2_FORMS = frozenset({"oauth.authorize"})
SESSION_LIFETIME = timedelta(days=7)
CSP = ("default-src 'self'; img-src 'self' data: https:; style-src 'self'; script-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


@dataclass(frozen=True)
class NavItem:
    label: str
    endpoint: str
    operator_only: bool = False
    #: A count shown beside the label (e.g. new sounds); 0 shows nothing.
    badge: Callable[[SignedIn], int] | None = None


def add_nav_item(app: Flask, label: str, endpoint: str, *, operator_only: bool = False,
                 first: bool = False, badge: Callable[[SignedIn], int] | None = None) -> None:
    """Show a page in the navigation bar (``first`` makes it the landing page)."""
    items: list[NavItem] = app.extensions.setdefault("soundkit_nav", [])
    item = NavItem(label, endpoint, operator_only, badge)
    if first:
        items.insert(0, item)
    else:
        items.append(item)


def home_url(app: Flask) -> str:
    items: list[NavItem] = app.extensions.get("soundkit_nav", [])
    user = current_user()
    for item in items:
        if not item.operator_only or (user and user.is_operator):
            return url_for(item.endpoint)
    return url_for("web.login")


def _needs_csrf() -> bool:
    if request.method not in UNSAFE_METHODS:
        return False
    return not request.path.startswith("/v2/") or request.endpoint in V2_FORMS


def init_app(app: Flask) -> None:
    app.config["SESSION_COOKIE_NAME"] = "soundkit_session"
    app.config["PERMANENT_SESSION_LIFETIME"] = SESSION_LIFETIME
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # checked in _csrf below, by rule
    app.config["WTF_CSRF_TIME_LIMIT"] = None  # the token lives as long as the session
    csrf.init_app(app)
    app.register_blueprint(bp)
    add_nav_item(app, "Connected apps", "web.connected_apps")

    @app.before_request
    def _csrf() -> None:
        if _needs_csrf():
            csrf.protect()

    @app.errorhandler(CSRFError)
    def _csrf_failed(error: CSRFError) -> tuple[str, int]:
        return render_template(
            "error.html", title="This form has expired",
            message="The form was open too long or came from another site. Go back, reload "
                    "the page and try again."), 400

    @app.after_request
    def _page_headers(response: Response) -> Response:
        if response.mimetype == "text/html":
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("Referrer-Policy", "same-origin")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            if current_user() is not None or request.path.startswith(("/v2/", "/login")):
                response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.context_processor
    def _page_context() -> dict[str, Any]:
        user = current_user()
        items: list[NavItem] = app.extensions.get("soundkit_nav", [])
        nav = [{"label": i.label, "url": url_for(i.endpoint),
                "active": request.endpoint == i.endpoint,
                "badge": i.badge(user) if i.badge and user else 0}
               for i in items if user and (not i.operator_only or user.is_operator)]
        return {"signed_in": user, "nav_items": nav, "home_url": home_url(app)}
