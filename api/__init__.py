"""The Soundkit web application: Sound Kit API, Login Kit, creator and operator pages.

``create_app`` is the one setup function; every subsystem registers itself with an
``init_app`` or a blueprint, and tests build the app with their own settings.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from api import auth, envelope, media, metrics, oauth, sounds, web
from api.services import Services
from api.web import library, ops
from soundkit.db import Database
from soundkit.logs import configure_logging
from soundkit.queue import Dispatcher, make_celery
from soundkit.settings import Settings, load_settings
from soundkit.storage import ObjectStore, open_store


def create_app(settings: Settings | None = None, *, store: ObjectStore | None = None,
               dispatcher: Dispatcher | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging("api", settings.log_level)
    app = Flask(__name__)
    if settings.trusted_proxies:
        # Behind a proxy, remote_addr is the proxy's: take the client's from the
        # headers the trusted proxies set, or every creator shares one throttle budget.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.public_url.startswith("https://"),
        JSON_SORT_KEYS=False,
    )
    app.extensions["soundkit"] = Services(
        settings=settings,
        db=Database(settings.database_url),
        store=store or open_store(settings),
        dispatcher=dispatcher or Dispatcher(make_celery(settings)),
    )
    envelope.init_app(app)
    auth.init_app(app)
    web.init_app(app)
    library.init_app(app)
    ops.init_app(app)
    metrics.init_app(app)
    oauth.init_app(app)
    app.register_blueprint(sounds.bp)
    app.register_blueprint(media.bp)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
