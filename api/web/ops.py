"""The operator console: ``/ops`` for people, ``/ops/api/`` for scripts.

Only operators (``soundkit users create --operator``) get in. The page and the JSON
carry the same figures (``soundkit.ops.overview``), read from the database and the
broker at request time, so any api process answers the same. Worker liveness asks the
workers themselves through Celery's remote control, which takes up to a second, so
the page loads it separately (``/ops/workers``) instead of waiting for it.

Actions (retry, cancel, re-send) are POSTs with the session's CSRF token, recorded in
the audit log under the operator's username; the wake-up messages they cause are sent
after the commit. ``SOUNDKIT_OPS_TOKEN`` opens the read-only JSON to scripts, never
the actions: an action must be traceable to a person.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as BaseResponse

from api.envelope import ApiError, envelope
from api.services import services
from api.web import add_nav_item
from api.web.signin import current_user, login_url
from soundkit import ops
from soundkit.queue import make_celery

log = logging.getLogger(__name__)

bp = Blueprint("ops", __name__)

F = TypeVar("F", bound=Callable[..., Any])
Page = str | tuple[str, int] | BaseResponse
#: How long the console waits for workers to answer a broadcast.
WORKER_TIMEOUT_S = 1.0
#: The filesystem transport polls its folders once a second, so answers take longer.
FILESYSTEM_WORKER_TIMEOUT_S = 1.5
_filesystem_control = threading.Lock()


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.add_template_filter(duration_words, "duration")
    app.add_template_filter(when_words, "when")
    add_nav_item(app, "Operations", "ops.index", operator_only=True)


def duration_words(seconds: float | None) -> str:
    """``0.042`` → ``42 ms``, ``75`` → ``1 min 15 s``, ``None`` → ``—``."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days"


def when_words(iso: str | None) -> str:
    """An ISO timestamp from the overview, as operators read it (UTC)."""
    if not iso:
        return "—"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%-d %b %H:%M:%S UTC")


# --- Who may come in -------------------------------------------------------------------------


def bearer_token_ok() -> bool:
    """The request carries ``Authorization: Bearer <SOUNDKIT_OPS_TOKEN>``."""
    expected = services().settings.ops_token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), (expected or "").encode())


def operator_page(view: F) -> F:
    """Signed out: to the sign-in page and back. Signed in but not an operator: 403."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        user = current_user()
        if user is None:
            return redirect(login_url(request.full_path.rstrip("?")))
        if not user.is_operator:
            return render_template(
                "error.html", title="Operators only",
                message="This page is for Soundkit operators. Your account is a creator "
                        "account; your sounds are in your library."), 403
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def operator_api(*, actions: bool = False) -> Callable[[F], F]:
    """JSON access: an operator's session, or (read-only) the ops bearer token."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is not None and user.is_operator:
                return view(*args, **kwargs)
            if not actions and bearer_token_ok():
                return view(*args, **kwargs)
            if user is not None:
                raise ApiError("scope_not_authorized", "operators only")
            if actions and bearer_token_ok():
                raise ApiError("scope_not_authorized",
                               "actions need an operator's signed-in session")
            raise ApiError("access_token_invalid",
                           "sign in as an operator or send the ops bearer token",
                           headers={"WWW-Authenticate": 'Bearer realm="soundkit-ops"'})

        return wrapper  # type: ignore[return-value]

    return decorate


def _operator_name() -> str:
    user = current_user()
    assert user is not None
    return user.username


# --- Data ------------------------------------------------------------------------------------


def _overview() -> dict[str, Any]:
    svc = services()
    with svc.db.session() as session:
        return ops.overview(session, svc.settings)


def _workers() -> dict[str, Any]:
    """Ask the workers; the control app is built once per api process and reused."""
    svc = services()
    control = current_app.extensions.get("soundkit_control")
    if control is None:
        control = current_app.extensions["soundkit_control"] = make_celery(
            svc.settings, "soundkit.ops")
        if svc.settings.uses_embedded_broker:  # look for replies often, not once a second
            control.conf.broker_transport_options = {
                **control.conf.broker_transport_options, "polling_interval": 0.1}
    if not svc.settings.uses_embedded_broker:
        return ops.worker_liveness(control, WORKER_TIMEOUT_S)
    with _filesystem_control:  # its reply queues cannot be bound concurrently
        return ops.worker_liveness(control, FILESYSTEM_WORKER_TIMEOUT_S, parallel=False)


def _read(query: Callable[[Session], Any]) -> Any:
    with services().db.session() as session:
        return query(session)


# --- Pages -------------------------------------------------------------------------------------


@bp.get("/ops")
@operator_page
def index() -> Page:
    return render_template("ops/index.html", data=_overview(),
                           settings=services().settings)


@bp.get("/ops/workers")
@operator_page
def workers() -> Page:
    """The liveness panel; the console fetches it as a fragment after the page loads."""
    fragment = request.args.get("fragment") == "1"
    return render_template("ops/workers.html" if not fragment else "ops/_workers.html",
                           workers=_workers())


def _act(action: Callable[[Session], ops.ActionResult]) -> ops.ActionResult:
    """Run an action in one transaction, then send its wake-ups and clean up its objects."""
    svc = services()
    with svc.db.session() as session:
        result = action(session)
    for upload_id in result.wake_uploads:
        svc.dispatcher.wake_upload(upload_id, result.log_ids.get(upload_id))
    for delivery_id in result.wake_webhooks:
        svc.dispatcher.wake_webhook(delivery_id)
    for key in result.delete_keys:
        try:
            svc.store.delete(key)
        except Exception:  # the job is final either way; a leftover object is harmless
            log.warning("could not delete %s after cancelling", key, exc_info=True)
    return result


def _page_action(action: Callable[[Session], ops.ActionResult], anchor: str) -> BaseResponse:
    try:
        result = _act(action)
    except ops.ActionRefused as refused:
        flash(f"Nothing was changed: {refused}.", "error")
    else:
        flash(result.message, "success")
    return redirect(url_for("ops.index") + f"#{anchor}")


def _retry(upload_id: str) -> Callable[[Session], ops.ActionResult]:
    name = _operator_name()
    return lambda session: ops.retry_upload(session, upload_id[:40], name)


def _cancel(upload_id: str) -> Callable[[Session], ops.ActionResult]:
    name, secret = _operator_name(), services().settings.secret_key
    return lambda session: ops.cancel_upload(session, upload_id[:40], name, secret_key=secret)


def _resend(delivery_id: int) -> Callable[[Session], ops.ActionResult]:
    name = _operator_name()
    return lambda session: ops.resend_webhook(session, delivery_id, name)


@bp.post("/ops/uploads/<upload_id>/retry")
@operator_page
def retry(upload_id: str) -> Page:
    return _page_action(_retry(upload_id), "failures")


@bp.post("/ops/uploads/<upload_id>/cancel")
@operator_page
def cancel(upload_id: str) -> Page:
    return _page_action(_cancel(upload_id), "waiting")


@bp.post("/ops/webhooks/<int:delivery_id>/resend")
@operator_page
def resend(delivery_id: int) -> Page:
    return _page_action(_resend(delivery_id), "webhooks")


# --- JSON --------------------------------------------------------------------------------------

#: Each read-only JSON view: path under /ops/api/, what it returns.
API_VIEWS: dict[str, Callable[[], Any]] = {
    "overview": _overview,
    "queues": lambda: ops.queue_depths(services().settings).as_json(),
    "uploads": lambda: _read(ops.uploads_by_status),
    "jobs": lambda: _read(ops.jobs_by_status_and_stage),
    "throughput": lambda: _read(ops.throughput),
    "stages": lambda: _read(ops.stage_durations),
    "oldest-waiting": lambda: _read(ops.oldest_waiting),
    "waiting": lambda: _read(ops.waiting_jobs),
    "stalled": lambda: _read(ops.stalled_jobs),
    "failures": lambda: _read(ops.failures),
    "flagged": lambda: _read(ops.flagged_uploads),
    "webhooks": lambda: _read(ops.webhook_backlog),
    "audit": lambda: _read(ops.recent_audit),
    "workers": _workers,
}


@bp.get("/ops/api/")
@operator_api()
def api_index() -> Response:
    """What there is to read, and the actions."""
    return envelope({
        "views": {name: url_for("ops.api_view", name=name) for name in API_VIEWS},
        "actions": {
            "retry": "POST /ops/api/uploads/<upload_id>/retry",
            "cancel": "POST /ops/api/uploads/<upload_id>/cancel",
            "resend": "POST /ops/api/webhooks/<delivery_id>/resend",
        }})


@bp.get("/ops/api/<name>")
@operator_api()
def api_view(name: str) -> Response:
    view = API_VIEWS.get(name)
    if view is None:
        raise ApiError("not_found", f"no such view; try one of {', '.join(API_VIEWS)}")
    return envelope({name.replace("-", "_"): view()})


def _api_action(action: Callable[[Session], ops.ActionResult]) -> Response:
    try:
        result = _act(action)
    except ops.ActionRefused as refused:
        code = "not_found" if isinstance(refused, ops.TargetNotFound) else "invalid_params"
        raise ApiError(code, str(refused)) from None
    return envelope({"message": result.message})


@bp.post("/ops/api/uploads/<upload_id>/retry")
@operator_api(actions=True)
def api_retry(upload_id: str) -> Response:
    return _api_action(_retry(upload_id))


@bp.post("/ops/api/uploads/<upload_id>/cancel")
@operator_api(actions=True)
def api_cancel(upload_id: str) -> Response:
    return _api_action(_cancel(upload_id))


@bp.post("/ops/api/webhooks/<int:delivery_id>/resend")
@operator_api(actions=True)
def api_resend(delivery_id: int) -> Response:
    return _api_action(_resend(delivery_id))
