"""Who is signed in: the creator session cookie and the helpers pages use.

The session is Flask's signed cookie (``HttpOnly``, ``SameSite=Lax``, ``Secure`` when
the public URL is https). It holds the user id and a fingerprint of the password
hash, so changing a password signs every other browser out. Signing in clears the
session first, which also renews the CSRF token (no session fixation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import g, redirect, request, session, url_for

from api.services import services
from soundkit.models import User

F = TypeVar("F", bound=Callable[..., Any])
SESSION_USER, SESSION_FINGERPRINT = "uid", "pwf"


@dataclass(frozen=True)
class SignedIn:
    """The signed-in creator, as pages need them."""

    id: int
    username: str
    display_name: str
    is_operator: bool


def _fingerprint(password_hash: str | None) -> str:
    return hashlib.sha256((password_hash or "").encode()).hexdigest()[:16]


def current_user() -> SignedIn | None:
    """The creator this browser is signed in as, or None (cached for the request)."""
    if "signed_in" in g:
        cached: SignedIn | None = g.signed_in
        return cached
    found = None
    user_id = session.get(SESSION_USER)
    if isinstance(user_id, int):
        with services().db.session() as db:
            user = db.get(User, user_id)
            if user is not None and session.get(SESSION_FINGERPRINT) == _fingerprint(
                    user.password_hash):
                found = SignedIn(user.id, user.username, user.display_name, user.is_operator)
    g.signed_in = found
    return found


def start_session(user_id: int) -> None:
    session.clear()
    with services().db.session() as db:
        user = db.get(User, user_id)
        assert user is not None
        session[SESSION_USER] = user.id
        session[SESSION_FINGERPRINT] = _fingerprint(user.password_hash)
    session.permanent = True
    g.pop("signed_in", None)


def end_session() -> None:
    session.clear()
    g.signed_in = None


def safe_next(target: str | None) -> str | None:
    """A same-site path to continue to after signing in, or None.

    Only paths are accepted (``/v2/auth/authorize/?…``): anything with a scheme or
    host, a protocol-relative ``//host`` or a backslash could send the creator to
    another site.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(c) < 32 for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def login_url(next_path: str | None = None) -> str:
    target = safe_next(next_path)
    return url_for("web.login", next=target) if target else url_for("web.login")


def login_required(view: F) -> F:
    """Send a signed-out browser to ``/login``, then back to this page."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_user() is None:
            return redirect(login_url(request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def signed_in_user() -> SignedIn:
    """The creator of a :func:`login_required` view."""
    user = current_user()
    assert user is not None
    return user
