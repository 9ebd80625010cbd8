"""Signed webhooks through an outbox.

An event is written as a :class:`WebhookDelivery` row in the same transaction as the
change it reports, so it exists if and only if the change committed. A task then
POSTs it; failures are retried with exponential backoff and jitter until the
delivery is ``SOUNDKIT_WEBHOOK_MAX_AGE_S`` old (72 hours by default). Delivery is at
least once: receivers de-duplicate on the event's content.

Signature (API.md): ``Soundkit-Signature: t=<unix seconds>,s=<hex HMAC-SHA256(signing
secret, t + "." + raw body)>`` with the app's own signing secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from soundkit.models import App, WebhookDelivery, utcnow
from soundkit.security import decrypt, open_id

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Soundkit-Signature"
BACKOFF_BASE_S = 15.0
BACKOFF_CAP_S = 3600.0


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},s={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300,
           now: float | None = None) -> bool:
    """What a receiver does: check the HMAC and that the timestamp is recent."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


def queue_event(session: Session, app: App, user_id: int, event: str,
                content: dict[str, Any], *, dedupe_key: str, secret_key: str) -> bool:
    """Add an outbox row for ``event`` unless one with ``dedupe_key`` exists.

    Apps without a webhook URL get nothing. Returns True if a row was added.
    """
    if not app.webhook_url:
        return False
    if session.scalar(select(WebhookDelivery.id).where(
            WebhookDelivery.dedupe_key == dedupe_key)) is not None:
        return False
    body = json.dumps({
        "client_key": app.client_key,
        "event": event,
        "create_time": int(time.time()),
        "user_openid": open_id(secret_key, app.client_key, user_id),
        "content": json.dumps(content, separators=(",", ":")),
    }, separators=(",", ":"))
    try:
        with session.begin_nested():
            session.add(WebhookDelivery(app_id=app.id, event=event, dedupe_key=dedupe_key,
                                        body=body))
    except IntegrityError:  # a concurrent writer added the same event first
        return False
    return True


def backoff_s(attempts: int) -> float:
    """Exponential backoff with full jitter, capped at an hour between tries."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** max(attempts - 1, 0)))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


@dataclass(frozen=True)
class HttpResult:
    status_code: int | None
    error: str | None


Poster = Callable[[str, bytes, dict[str, str], float], HttpResult]


def post_with_requests(url: str, body: bytes, headers: dict[str, str],
                       timeout: float) -> HttpResult:
    import requests

    try:
        response = requests.post(url, data=body, headers=headers, timeout=timeout,
                                 allow_redirects=False)
    except requests.RequestException as error:
        return HttpResult(None, f"{type(error).__name__}: {error}"[:500])
    return HttpResult(response.status_code, None if response.ok else response.text[:500])


def due_deliveries(session: Session, now: datetime | None = None, limit: int = 200) -> list[int]:
    now = now or utcnow()
    return list(session.scalars(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)).all())


def deliver(session: Session, delivery_id: int, *, secret_key: str, timeout_s: float,
            max_age_s: int, post: Poster = post_with_requests) -> str:
    """Try one delivery now; returns its new status (pending, delivered or failed).

    The row is pushed into the future *before* the request is made, so a second
    worker that picks the same row meanwhile finds it not due and leaves it alone.
    """
    now = utcnow()
    claimed = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
               WebhookDelivery.next_attempt_at <= now)
        .values(next_attempt_at=now + timedelta(seconds=timeout_s * 3 + 30))
        .execution_options(synchronize_session=False))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return "skipped"
    session.commit()
    delivery = session.get(WebhookDelivery, delivery_id)
    assert delivery is not None
    session.refresh(delivery)
    app = delivery.app
    if not app.webhook_url or not app.webhook_secret_encrypted:
        delivery.status, delivery.last_error = "failed", "the app has no webhook URL any more"
        return delivery.status
    body = delivery.body.encode()
    secret = decrypt(secret_key, app.webhook_secret_encrypted)
    headers = {"Content-Type": "application/json", "User-Agent": "Soundkit-Webhooks/1",
               SIGNATURE_HEADER: sign(secret, body, int(time.time()))}
    result = post(app.webhook_url, body, headers, timeout_s)
    delivery.attempts += 1
    delivery.last_status_code = result.status_code
    delivery.last_error = result.error
    if result.status_code is not None and 200 <= result.status_code < 300:
        delivery.status, delivery.delivered_at = "delivered", utcnow()
    elif utcnow() - delivery.created_at > timedelta(seconds=max_age_s):
        delivery.status = "failed"
    else:
        delivery.next_attempt_at = utcnow() + timedelta(seconds=backoff_s(delivery.attempts))
    log.info("webhook %s (%s) to %s: %s", delivery.id, delivery.event, app.webhook_url,
             delivery.status if result.error is None else result.error)
    return delivery.status
