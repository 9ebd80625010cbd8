"""Log lines: the request's log id reaches Celery's own lines, routine beat noise does not."""

from __future__ import annotations

import logging

from soundkit.logs import (
    ContextFilter,
    QuietPeriodicFilter,
    log_context,
    log_id_of_task,
    task_id_for,
)

LOG_ID = "20261122093015A1B2C3D4E5F60718"


def record(name: str, msg: str, args: object = None) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, msg, None, None)
    made.args = args  # type: ignore[assignment]
    return made


def test_a_task_id_carries_the_log_id_and_stays_unique() -> None:
    first, second = task_id_for(LOG_ID), task_id_for(LOG_ID)
    assert first and second and first != second
    assert log_id_of_task(first) == LOG_ID
    assert task_id_for(None) is None
    assert task_id_for("not a log id; drop table") is None
    assert log_id_of_task("3f0c1f9e-5d7e-4a9b-9f0e-1a2b3c4d5e6f") is None  # Celery's own ids
    assert log_id_of_task(None) is None


def test_celery_lines_about_the_task_get_its_log_id() -> None:
    task_id = task_id_for(LOG_ID)
    received = record("celery.worker.strategy", "Task %(name)s[%(id)s] received",
                      {"name": "soundkit.ingest", "id": task_id})
    received.data = {"name": "soundkit.ingest", "id": task_id}
    succeeded = record("celery.app.trace", "Task %(name)s[%(id)s] succeeded",
                       {"name": "soundkit.ingest", "id": task_id})
    ours = record("soundkit.jobs", "claimed %s", ("upl_1",))
    stamp = ContextFilter("worker")
    for line in (received, succeeded, ours):
        assert stamp.filter(line)
    assert (received.log_id, succeeded.log_id, ours.log_id) == (LOG_ID, LOG_ID, None)
    with log_context("OTHER0000000000", "upl_1"):
        assert stamp.filter(succeeded)
    assert succeeded.log_id == "OTHER0000000000"  # the job's context wins
    assert succeeded.upload_id == "upl_1"


def test_routine_periodic_lines_are_dropped_and_warnings_kept() -> None:
    quiet = QuietPeriodicFilter()
    assert not quiet.filter(record("celery.app.trace", "Task soundkit.reconcile[x] succeeded"))
    assert quiet.filter(record("celery.app.trace", "Task soundkit.ingest[x] succeeded"))
    warning = record("celery.app.trace", "Task soundkit.reconcile[x] retry")
    warning.levelno = logging.WARNING
    assert quiet.filter(warning)
