"""Webhooks: signed, written once per event, retried with backoff, given up after the max age."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import select

from soundkit import webhooks
from soundkit.db import Database
from soundkit.models import App, WebhookDelivery, utcnow
from soundkit.security import open_id
from soundkit.settings import Settings
from tests.conftest import World, build_world


class FakeReceiver:
    """Answers with the given status codes in turn and records what it got."""

    def __init__(self, *codes: int | None) -> None:
        self.codes = list(codes)
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str],
                 timeout: float) -> webhooks.HttpResult:
        self.calls.append((url, body, headers))
        code = self.codes.pop(0)
        return webhooks.HttpResult(code, None if code and code < 300 else "refused")


@pytest.fixture
def hooked(db: Database, settings: Settings) -> World:
    return build_world(db, settings, webhook_url="https://beatlab.example/hook")


def queue(db: Database, world: World, key: str = "k1") -> int:
    with db.session() as session:
        app = session.scalars(select(App)).one()
        assert webhooks.queue_event(session, app, world.creator.id, "sound.upload.complete",
                                    {"upload_id": "upl_1", "sound_id": "snd_1"},
                                    dedupe_key=key, secret_key=world.settings.secret_key)
        session.flush()
        return session.scalars(select(WebhookDelivery.id)
                               .where(WebhookDelivery.dedupe_key == key)).one()


def deliver(db: Database, world: World, delivery_id: int, post: FakeReceiver,
            max_age_s: int = 72 * 3600) -> str:
    with db.session() as session:
        return webhooks.deliver(session, delivery_id, secret_key=world.settings.secret_key,
                                timeout_s=1, max_age_s=max_age_s, post=post)


def test_delivery_is_signed_with_the_apps_own_secret(db: Database, hooked: World) -> None:
    delivery_id = queue(db, hooked)
    receiver = FakeReceiver(200)
    assert deliver(db, hooked, delivery_id, receiver) == "delivered"
    url, body, headers = receiver.calls[0]
    assert url == "https://beatlab.example/hook"
    assert webhooks.verify(hooked.webhook_secret, body, headers["Soundkit-Signature"])
    assert not webhooks.verify("another secret", body, headers["Soundkit-Signature"])
    assert not webhooks.verify(hooked.webhook_secret, body + b" ", headers["Soundkit-Signature"])
    event = json.loads(body)
    assert set(event) == {"client_key", "event", "create_time", "user_openid", "content"}
    assert event["client_key"] == hooked.client_key
    assert json.loads(event["content"]) == {"upload_id": "upl_1", "sound_id": "snd_1"}
    expected = open_id(hooked.settings.secret_key, hooked.client_key, hooked.creator.id)
    assert event["user_openid"] == expected
    assert event["user_openid"] not in (str(hooked.creator.id), hooked.creator.username)


def test_an_old_signature_is_refused_by_verify(hooked: World) -> None:
    header = webhooks.sign("s", b"{}", 1_000)
    assert webhooks.verify("s", b"{}", header, now=1_100)
    assert not webhooks.verify("s", b"{}", header, now=10_000)
    assert not webhooks.verify("s", b"{}", "garbage")


def test_the_same_event_is_queued_once(db: Database, hooked: World) -> None:
    queue(db, hooked, "same")
    with db.session() as session:
        app = session.scalars(select(App)).one()
        assert not webhooks.queue_event(session, app, hooked.creator.id, "x", {},
                                        dedupe_key="same", secret_key="k" * 40)
        assert len(session.scalars(select(WebhookDelivery)).all()) == 1


def test_failures_back_off_and_the_same_bytes_are_resent(db: Database, hooked: World) -> None:
    delivery_id = queue(db, hooked)
    receiver = FakeReceiver(500, None, 200)
    with time_machine.travel(utcnow(), tick=False) as clock:
        assert deliver(db, hooked, delivery_id, receiver) == "pending"
        with db.session() as session:
            first_wait = session.get(WebhookDelivery, delivery_id).next_attempt_at - utcnow()  # type: ignore[union-attr]
        assert timedelta(seconds=7) <= first_wait <= timedelta(seconds=15)
        assert deliver(db, hooked, delivery_id, receiver) == "skipped"  # not due yet
        clock.shift(first_wait + timedelta(seconds=1))
        assert deliver(db, hooked, delivery_id, receiver) == "pending"  # connection error
        with db.session() as session:
            row = session.get(WebhookDelivery, delivery_id)
            assert row is not None and row.attempts == 2
            second_wait = row.next_attempt_at - utcnow()
        assert second_wait > first_wait
        clock.shift(second_wait + timedelta(seconds=1))
        assert deliver(db, hooked, delivery_id, receiver) == "delivered"
    bodies = {body for _, body, _ in receiver.calls}
    assert len(bodies) == 1


def test_backoff_grows_and_is_capped() -> None:
    waits = [webhooks.backoff_s(n) for n in range(1, 15)]
    assert all(w <= webhooks.BACKOFF_CAP_S for w in waits)
    assert waits[-1] >= webhooks.BACKOFF_CAP_S / 2


def test_gives_up_after_the_max_age(db: Database, hooked: World) -> None:
    delivery_id = queue(db, hooked)
    with time_machine.travel(utcnow() + timedelta(hours=73), tick=False):
        assert deliver(db, hooked, delivery_id, FakeReceiver(503)) == "failed"
        with db.session() as session:
            assert webhooks.due_deliveries(session) == []


def test_apps_without_a_webhook_url_get_nothing(db: Database, world: World) -> None:
    with db.session() as session:
        app = session.scalars(select(App)).one()
        assert not webhooks.queue_event(session, app, world.creator.id, "x", {},
                                        dedupe_key="k", secret_key="k" * 40)
