"""Logging: JSON lines when not on a terminal, with the request's ``log_id`` on each line.

The api sets the log id per request; the worker sets it from the upload row for
the duration of a job, so ``grep <log_id>`` over api and worker logs shows one
sound's whole journey.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from pythonjsonlogger.json import JsonFormatter

current_log_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "log_id", default=None)
current_upload_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "upload_id", default=None)


#: What a log id looks like (the api's ``new_log_id`` makes them); anything else is not carried.
_LOG_ID = r"[0-9A-Za-z]{8,64}"
#: A task id that carries a request's log id: ``<log_id>.<random hex>``.
_TASK_ID = re.compile(rf"^(?P<log_id>{_LOG_ID})\.[0-9a-f]{{32}}$")


def task_id_for(log_id: str | None) -> str | None:
    """A fresh Celery task id that starts with ``log_id`` (None: let Celery pick one)."""
    if not log_id or not re.fullmatch(_LOG_ID, log_id):
        return None
    return f"{log_id}.{uuid.uuid4().hex}"


def log_id_of_task(task_id: object) -> str | None:
    """The log id a task id made by ``task_id_for`` carries, else None."""
    found = _TASK_ID.match(task_id) if isinstance(task_id, str) else None
    return found.group("log_id") if found else None


def _celery_task_id(record: logging.LogRecord) -> object:
    """The task id of Celery's own lines ("Task … received", "… succeeded in …")."""
    data = getattr(record, "data", None)
    if isinstance(data, dict):
        return data.get("id")
    return record.args.get("id") if isinstance(record.args, dict) else None


class ContextFilter(logging.Filter):
    """Copies the context's ids onto every record.

    Celery logs a task's arrival and end outside the job's context; those lines get
    the log id from the task id (``task_id_for``).
    """

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def filter(self, record: logging.LogRecord) -> bool:
        log_id = current_log_id.get()
        if log_id is None and record.name.startswith("celery"):
            log_id = log_id_of_task(_celery_task_id(record))
        record.log_id = log_id
        record.upload_id = current_upload_id.get()
        record.soundkit_process = self.process_name
        return True


#: Housekeeping tasks that run every few seconds; their routine lines are noise.
PERIODIC_TASKS = ("soundkit.reconcile", "soundkit.deliver_due_webhooks",
                  "deliver-due-webhooks", "Sending due task reconcile")


class QuietPeriodicFilter(logging.Filter):
    """Drops Celery's routine INFO lines about beat's periodic tasks.

    The reconciler logs on its own when it actually re-sends or gives up on a job, so
    nothing of interest is lost; warnings and errors always pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not record.name.startswith("celery"):
            return True
        message = record.getMessage()
        return not any(name in message for name in PERIODIC_TASKS)


@contextmanager
def log_context(log_id: str | None, upload_id: str | None = None) -> Iterator[None]:
    log_token = current_log_id.set(log_id)
    upload_token = current_upload_id.set(upload_id)
    try:
        yield
    finally:
        current_log_id.reset(log_token)
        current_upload_id.reset(upload_token)


def configure_logging(process_name: str, level: str = "INFO") -> None:
    """Install one handler on the root logger (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_soundkit", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._soundkit = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter(process_name))
    handler.addFilter(QuietPeriodicFilter())
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(soundkit_process)s %(name)s "
            "[%(log_id)s] %(message)s"))
    else:
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(log_id)s %(upload_id)s",
            rename_fields={"soundkit_process": "process", "levelname": "level"},
            timestamp=True))
    root.addHandler(handler)
    root.setLevel(level)
