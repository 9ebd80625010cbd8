"""The Celery application: ``celery -A worker.app worker`` / ``celery -A worker.app beat``.

Built from the same settings as the api (``soundkit.queue.make_celery``); tasks are
thin and receive ids, never rows.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import setup_logging, worker_process_init
from sqlalchemy import select

from soundkit import jobs, webhooks
from soundkit.fingerprints import repack_index
from soundkit.logs import configure_logging
from soundkit.models import Upload
from soundkit.queue import (
    TASK_DELIVER_DUE_WEBHOOKS,
    TASK_DELIVER_WEBHOOK,
    TASK_INGEST,
    TASK_RECONCILE,
    TASK_REPACK_INDEX,
    make_celery,
)
from soundkit.settings import load_settings
from worker import fingerprinting, ingest
from worker.base import SoundkitTask
from worker.runtime import runtime

log = logging.getLogger(__name__)

_settings = load_settings()
celery = make_celery(_settings, "soundkit.worker")
ingest.set_policy_factory(fingerprinting.policy_factory)

#: Uploads whose bytes stopped arriving this long ago are given up.
ABANDONED_UPLOAD_S = 3600.0


@setup_logging.connect
def _logging(**_: Any) -> None:
    configure_logging("worker", _settings.log_level)


@worker_process_init.connect
def _fresh_runtime(**_: Any) -> None:
    """A forked pool child must not share the parent's database connections."""
    runtime.cache_clear()


@celery.task(base=SoundkitTask, bind=True, name=TASK_INGEST)
def ingest_upload(self: SoundkitTask, upload_id: str) -> str:
    return ingest.run(self.rt, upload_id)


@celery.task(base=SoundkitTask, bind=True, name=TASK_DELIVER_WEBHOOK)
def deliver_webhook(self: SoundkitTask, delivery_id: int) -> str:
    rt = self.rt
    with rt.db.session() as session:
        return webhooks.deliver(session, delivery_id, secret_key=rt.settings.secret_key,
                                timeout_s=rt.settings.webhook_timeout_s,
                                max_age_s=rt.settings.webhook_max_age_s)


@celery.task(base=SoundkitTask, bind=True, name=TASK_DELIVER_DUE_WEBHOOKS)
def deliver_due_webhooks(self: SoundkitTask) -> int:
    rt = self.rt
    with rt.db.session() as session:
        due = webhooks.due_deliveries(session)
    for delivery_id in due:
        rt.dispatcher.wake_webhook(delivery_id)
    return len(due)


@celery.task(base=SoundkitTask, bind=True, name=TASK_RECONCILE)
def reconcile(self: SoundkitTask) -> dict[str, int]:
    """Beat's safety net: re-send lost wake-ups, give up on exhausted jobs."""
    rt, s = self.rt, self.rt.settings
    with rt.db.session() as session:
        report = jobs.reconcile(session, max_attempts=s.max_attempts,
                                wakeup_grace_s=s.wakeup_grace_s,
                                abandoned_upload_s=ABANDONED_UPLOAD_S,
                                secret_key=s.secret_key)
        log_ids = dict(session.execute(select(Upload.id, Upload.log_id)
                                       .where(Upload.id.in_(report.resend))).tuples().all())
    for upload_id in report.resend:
        rt.dispatcher.wake_upload(upload_id, log_ids.get(upload_id))
    if report.resend or report.gave_up or report.abandoned:
        log.info("reconciled: resent %d, gave up %d, abandoned %d", len(report.resend),
                 len(report.gave_up), len(report.abandoned))
    return {"resent": len(report.resend), "gave_up": len(report.gave_up),
            "abandoned": len(report.abandoned)}


@celery.task(base=SoundkitTask, bind=True, name=TASK_REPACK_INDEX)
def repack_fingerprint_index(self: SoundkitTask) -> bool:
    """Beat: keep the fingerprint index's bucket width fitted to its size.

    Resumable: a run cut short (time limit, restart) leaves both layouts readable
    and the next run carries on.
    """
    moved = repack_index(self.rt.db.engine)
    if moved:
        log.info("fingerprint index layout refitted")
    return moved
