"""The Celery application's configuration and the one function that sends wake-ups.

The api and the worker both build their Celery app here from the same settings, so
they agree on broker, queues and the visibility timeout. Messages carry only a job
id: the database row is the job, a message merely says "look at it now". That is why
losing a message (a restarted Redis, a crashed api) can only delay a job: the
reconciler finds unclaimed rows and sends their wake-up again.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from soundkit.logs import task_id_for
from soundkit.settings import Settings

log = logging.getLogger(__name__)

INGEST_QUEUE = "ingest"
WEBHOOK_QUEUE = "webhooks"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (INGEST_QUEUE, WEBHOOK_QUEUE, MAINTENANCE_QUEUE)

TASK_INGEST = "soundkit.ingest"
TASK_DELIVER_WEBHOOK = "soundkit.deliver_webhook"
TASK_RECONCILE = "soundkit.reconcile"
TASK_REPACK_INDEX = "soundkit.repack_fingerprint_index"
#: How often beat checks that the fingerprint index's layout fits its size.
REPACK_INTERVAL_S = 600
TASK_DELIVER_DUE_WEBHOOKS = "soundkit.deliver_due_webhooks"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting, from RELIABILITY.md's baseline."""
    transport: dict[str, Any] = {}
    if settings.uses_embedded_broker:
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),  # else ./control in the cwd
        }
    else:
        transport = {"visibility_timeout": settings.visibility_timeout_s}
    hard_limit = settings.job_lease_s
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 200,
        "worker_hijack_root_logger": False,
        "task_time_limit": hard_limit,
        "task_soft_time_limit": max(hard_limit - 30, hard_limit * 9 // 10),
        "task_default_queue": MAINTENANCE_QUEUE,
        "task_create_missing_queues": True,
        "task_routes": {
            TASK_INGEST: {"queue": INGEST_QUEUE},
            TASK_DELIVER_WEBHOOK: {"queue": WEBHOOK_QUEUE},
            TASK_DELIVER_DUE_WEBHOOKS: {"queue": MAINTENANCE_QUEUE},
            TASK_RECONCILE: {"queue": MAINTENANCE_QUEUE},
            TASK_REPACK_INDEX: {"queue": MAINTENANCE_QUEUE},
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "beat_schedule": {
            "reconcile": {"task": TASK_RECONCILE,
                          "schedule": settings.reconcile_interval_s,
                          "options": {"expires": settings.reconcile_interval_s * 3}},
            "deliver-due-webhooks": {"task": TASK_DELIVER_DUE_WEBHOOKS,
                                     "schedule": settings.reconcile_interval_s,
                                     "options": {"expires": settings.reconcile_interval_s * 3}},
            "repack-fingerprint-index": {"task": TASK_REPACK_INDEX,
                                         "schedule": REPACK_INTERVAL_S,
                                         "options": {"expires": REPACK_INTERVAL_S}},
        },
        "beat_schedule_filename": str(settings.var_dir / "celerybeat-schedule"),
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }


def make_celery(settings: Settings, name: str = "soundkit") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


class Dispatcher:
    """Sends wake-up messages. Call it only after the transaction that made the job commits.

    Sending never raises: if the broker is down, the job is already durable in the
    database and the reconciler will send its wake-up once the broker is back.
    """

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def _send(self, task: str, *args: Any, task_id: str | None = None) -> bool:
        try:
            self.celery.send_task(task, args=list(args), task_id=task_id, retry=True,
                                  retry_policy={"max_retries": 2, "interval_start": 0.2,
                                                "interval_step": 0.5, "interval_max": 1})
        except Exception:
            log.warning("could not send %s%r; the reconciler will resend it", task, args,
                        exc_info=True)
            return False
        return True

    def wake_upload(self, upload_id: str, log_id: str | None = None) -> bool:
        """Wake a worker for the job; ``log_id`` (the upload's request) prefixes the task id.

        Celery's own lines about the task (received, succeeded) name only the task id,
        so the prefix is how they carry the request's ``log_id`` too (see ``logs``).
        """
        return self._send(TASK_INGEST, upload_id, task_id=task_id_for(log_id))

    def wake_webhook(self, delivery_id: int) -> bool:
        return self._send(TASK_DELIVER_WEBHOOK, delivery_id)
