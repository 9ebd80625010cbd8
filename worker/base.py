"""The one task base class every Soundkit task uses.

It gives each task the same frame: the process's runtime (settings, database,
store), a log context, and retries with exponential backoff and jitter for
transient errors only. Bad audio is never retried: the ingest code turns it into a
final ``fail_reason`` before it could reach here. Retry delays stay far below the
broker's visibility timeout, so a delayed retry is never duplicated by a re-delivery.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from worker.ingest import TRANSIENT, TransientFailure
from worker.runtime import Runtime, runtime

log = logging.getLogger(__name__)


class SoundkitTask(Task):  # type: ignore[misc]
    abstract = True
    autoretry_for = (TransientFailure, *TRANSIENT)
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 8
    acks_late = True
    reject_on_worker_lost = True

    @property
    def rt(self) -> Runtime:
        return runtime()

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        log.debug("task %s%r starting", self.name, args)
