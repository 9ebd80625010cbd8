"""Login Kit: the OAuth 2.0 authorization server (Authlib) and its endpoints."""

from __future__ import annotations

from flask import Flask

from api.oauth.server import LoginKitServer
from api.oauth.views import bp, login_kit

__all__ = ["init_app", "login_kit"]


def init_app(app: Flask) -> None:
    server = LoginKitServer()
    server.init_app(app)
    app.extensions["login_kit"] = server
    app.register_blueprint(bp)
