"""What the operator console and ``/metrics`` know: queries, broker probes and actions.

Everything here reads the database (the truth about every job) or asks the broker
directly, at the moment it is called. Nothing is kept in process memory, so any api
process (gunicorn runs several) gives the same answer, and a restarted api loses
nothing.

The three operator actions (retry a failed job, cancel a waiting one, re-send a
webhook) are compare-and-set changes in the caller's transaction, each with an
:class:`~soundkit.models.AuditEntry` naming the operator. They return what must be
sent to the broker *after* the commit, as everything else in Soundkit does.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import String, and_, case, cast, func, or_, select, update
from sqlalchemy.orm import Session

from soundkit import jobs
from soundkit.library import PROGRESS_STAGES
from soundkit.models import (
    App,
    AuditEntry,
    FailReason,
    Stage,
    StageRun,
    Upload,
    UploadStatus,
    User,
    WebhookDelivery,
    utcnow,
)
from soundkit.queue import QUEUES
from soundkit.settings import Settings

log = logging.getLogger(__name__)

#: A job queued this long without any claim is shown as stalled.
QUEUED_STALL_S = 300
#: An upload whose bytes have been arriving for this long is shown as stalled.
RECEIVING_STALL_S = 900
THROUGHPUT_WINDOW_S = 3600
THROUGHPUT_BUCKET_S = 300
STAGE_WINDOW_S = 24 * 3600
STAGE_SAMPLE_LIMIT = 20000
#: kombu's Redis transport keeps priorities 3, 6 and 9 of a queue in extra lists.
REDIS_PRIORITY_SEP = "\x06\x16"
REDIS_PRIORITY_STEPS = (3, 6, 9)


def _age_s(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max(0.0, (now - then).total_seconds()), 3)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- Jobs --------------------------------------------------------------------------------------


def uploads_by_status(session: Session) -> list[dict[str, Any]]:
    """Every upload counted by ``status`` and ``fail_reason`` (None unless FAILED)."""
    rows = session.execute(
        select(Upload.status, Upload.fail_reason, func.count())
        .group_by(Upload.status, Upload.fail_reason)).all()
    return [{"status": s, "fail_reason": r, "count": int(c)}
            for s, r, c in sorted(rows, key=lambda row: (row[0], row[1] or ""))]


def jobs_by_status_and_stage(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Upload.status, Upload.stage, func.count())
        .group_by(Upload.status, Upload.stage)).all()
    order: dict[str, int] = {str(s): i for i, s in enumerate(Stage)}
    return [{"status": s, "stage": st, "count": int(c)}
            for s, st, c in sorted(rows, key=lambda r: (r[0], order.get(r[1], 99)))]


def _waiting() -> list[Any]:
    """PROCESSING with nobody holding it: freshly queued, released after an error, retried."""
    return [Upload.status == UploadStatus.PROCESSING, Upload.lease_owner.is_(None)]


def oldest_waiting(session: Session, now: datetime | None = None) -> dict[str, Any] | None:
    """The oldest job that is waiting for a worker; its age counts from the upload."""
    now = now or utcnow()
    upload = session.scalars(select(Upload).where(*_waiting())
                             .order_by(Upload.created_at).limit(1)).first()
    if upload is None:
        return None
    return {"upload_id": upload.id, "stage": upload.stage, "attempts": upload.attempts,
            "created_at": _iso(upload.created_at), "age_s": _age_s(now, upload.created_at)}


def waiting_jobs(session: Session, now: datetime | None = None,
                 limit: int = 20) -> list[dict[str, Any]]:
    """Jobs waiting for a worker, oldest first: the ones an operator may cancel."""
    now = now or utcnow()
    rows = session.execute(
        select(Upload, App.name, User.username).join(App, App.id == Upload.app_id)
        .join(User, User.id == Upload.user_id).where(*_waiting())
        .order_by(Upload.created_at).limit(limit)).all()
    return [{"upload_id": u.id, "stage": u.stage, "attempts": u.attempts, "app": app,
             "creator": creator, "title": u.title or u.original_filename,
             "created_at": _iso(u.created_at), "age_s": _age_s(now, u.created_at)}
            for u, app, creator in rows]


def _stalled(now: datetime) -> Any:
    expired = (Upload.status == UploadStatus.PROCESSING, Upload.lease_owner.is_not(None),
               Upload.lease_expires_at < now)
    unclaimed = (*_waiting(), Upload.attempts == 0,
                 Upload.created_at < now - timedelta(seconds=QUEUED_STALL_S))
    receiving = (Upload.status == UploadStatus.PROCESSING_UPLOAD,
                 Upload.created_at < now - timedelta(seconds=RECEIVING_STALL_S))
    return or_(and_(*expired), and_(*unclaimed), and_(*receiving))


def count_stalled(session: Session, now: datetime | None = None) -> int:
    return int(session.scalar(select(func.count()).select_from(Upload)
                              .where(_stalled(now or utcnow()))) or 0)


def stalled_jobs(session: Session, now: datetime | None = None,
                 limit: int = 50) -> list[dict[str, Any]]:
    """Jobs that should be moving and are not, each with why it looks stalled.

    - the lease expired: the worker holding it died or hung (the reconciler hands it on);
    - queued for ``QUEUED_STALL_S`` without a single claim: no worker is consuming;
    - bytes arriving for ``RECEIVING_STALL_S``: the client or the api went away.
    """
    now = now or utcnow()
    rows = session.execute(
        select(Upload, App.name, User.username).join(App, App.id == Upload.app_id)
        .join(User, User.id == Upload.user_id).where(_stalled(now))
        .order_by(Upload.created_at).limit(limit)).all()
    found = []
    for upload, app, creator in rows:
        if upload.status == UploadStatus.PROCESSING_UPLOAD:
            why = "bytes have been arriving for too long"
        elif upload.lease_owner is not None:
            why = f"lease of {upload.lease_owner} expired"
        else:
            why = "queued and never picked up by a worker"
        found.append({"upload_id": upload.id, "status": upload.status, "stage": upload.stage,
                      "attempts": upload.attempts, "lease_owner": upload.lease_owner,
                      "lease_expires_at": _iso(upload.lease_expires_at), "app": app,
                      "creator": creator, "why": why, "created_at": _iso(upload.created_at),
                      "age_s": _age_s(now, upload.created_at)})
    return found


def throughput(session: Session, now: datetime | None = None,
               window_s: int = THROUGHPUT_WINDOW_S,
               bucket_s: int = THROUGHPUT_BUCKET_S) -> dict[str, Any]:
    """Uploads received and finished in the last ``window_s``, in ``bucket_s`` buckets."""
    now = now or utcnow()
    start = now - timedelta(seconds=window_s)
    count = window_s // bucket_s
    ready, failed = [0] * count, [0] * count
    finished = session.execute(select(Upload.status, Upload.finished_at).where(
        Upload.finished_at >= start, Upload.finished_at <= now)).all()
    for status, finished_at in finished:
        if finished_at is None:
            continue
        index = min(count - 1, int((finished_at - start).total_seconds() // bucket_s))
        if status == UploadStatus.IN_LIBRARY:
            ready[index] += 1
        elif status == UploadStatus.FAILED:
            failed[index] += 1
    received = session.scalar(select(func.count()).select_from(Upload).where(
        Upload.created_at >= start)) or 0
    buckets = [{"start": _iso(start + timedelta(seconds=i * bucket_s)), "ready": ready[i],
                "failed": failed[i]} for i in range(count)]
    return {"window_s": window_s, "bucket_s": bucket_s, "received": int(received),
            "ready": sum(ready), "failed": sum(failed), "buckets": buckets}


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) on sorted data."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stage_durations(session: Session, now: datetime | None = None,
                    window_s: int = STAGE_WINDOW_S,
                    limit: int = STAGE_SAMPLE_LIMIT) -> list[dict[str, Any]]:
    """p50/p90/p99 of each stage over the last ``window_s`` (the newest ``limit`` runs).

    Percentiles are of successful runs; failed and refused runs are counted apart, since
    a refusal is usually quick and would flatter the figures.
    """
    now = now or utcnow()
    rows = session.execute(
        select(StageRun.stage, StageRun.outcome, StageRun.started_at, StageRun.finished_at)
        .where(StageRun.finished_at >= now - timedelta(seconds=window_s))
        .order_by(StageRun.finished_at.desc()).limit(limit)).all()
    ok: dict[str, list[float]] = defaultdict(list)
    other: dict[str, int] = defaultdict(int)
    for stage, outcome, started, finished in rows:
        if outcome == "ok":
            ok[stage].append(max(0.0, (finished - started).total_seconds()))
        else:
            other[stage] += 1
    found = []
    others = sorted((set(ok) | set(other)) - {str(s) for s in PROGRESS_STAGES})
    for stage in [*(str(s) for s in PROGRESS_STAGES), *others]:
        samples = sorted(ok.get(stage, []))
        if not samples and not other.get(stage):
            continue

        def q(value: float, samples: list[float] = samples) -> float | None:
            return round(percentile(samples, value), 3) if samples else None

        found.append({"stage": str(stage), "count": len(samples),
                      "not_ok": other.get(stage, 0), "p50_s": q(0.5), "p90_s": q(0.9),
                      "p99_s": q(0.99), "max_s": round(samples[-1], 3) if samples else None})
    return found


def failures(session: Session, now: datetime | None = None,
             per_reason: int = 10) -> list[dict[str, Any]]:
    """FAILED uploads grouped by ``fail_reason``: counts, and the newest jobs with details."""
    now = now or utcnow()
    day_ago = now - timedelta(days=1)
    counts = session.execute(
        select(Upload.fail_reason, func.count(),
               func.sum(case((Upload.finished_at >= day_ago, 1), else_=0)))
        .where(Upload.status == UploadStatus.FAILED)
        .group_by(Upload.fail_reason)).all()
    found = []
    for reason, total, last_day in sorted(counts, key=lambda r: -int(r[1])):
        rows = session.execute(
            select(Upload, App.name, User.username).join(App, App.id == Upload.app_id)
            .join(User, User.id == Upload.user_id)
            .where(Upload.status == UploadStatus.FAILED, Upload.fail_reason == reason)
            .order_by(Upload.finished_at.desc(), Upload.id).limit(per_reason)).all()
        found.append({
            "fail_reason": reason, "words": jobs.FAIL_REASON_WORDS.get(reason or "", ""),
            "count": int(total), "last_24h": int(last_day or 0),
            "retryable": reason == FailReason.INTERNAL,
            "jobs": [{"upload_id": u.id, "app": app, "creator": creator,
                      "title": u.title or u.original_filename, "attempts": u.attempts,
                      "error_detail": u.error_detail, "log_id": u.log_id,
                      "finished_at": _iso(u.finished_at)} for u, app, creator in rows]})
    return found


def flagged_uploads(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    """Sounds that got in although the fingerprint stage matched them (rules set to ``flag``).

    The matches are kept on the upload (``match_detail``) for an operator to review.
    """
    rows = session.execute(
        select(Upload, App.name, User.username).join(App, App.id == Upload.app_id)
        .join(User, User.id == Upload.user_id)
        .where(Upload.status == UploadStatus.IN_LIBRARY, Upload.match_detail.is_not(None),
               cast(Upload.match_detail, String) != "null")
        .order_by(Upload.finished_at.desc()).limit(limit)).all()
    return [{"upload_id": u.id, "sound_id": u.sound_id, "app": app, "creator": creator,
             "title": u.title or u.original_filename, "finished_at": _iso(u.finished_at),
             "matches": (u.match_detail or {}).get("matches", [])}
            for u, app, creator in rows
            if isinstance(u.match_detail, dict) and u.match_detail.get("action") == "flag"]


def webhook_backlog(session: Session, now: datetime | None = None,
                    limit: int = 20) -> dict[str, Any]:
    """Deliveries by status, the oldest pending one, and those pending or failing."""
    now = now or utcnow()
    counts = dict(session.execute(select(WebhookDelivery.status, func.count())
                                  .group_by(WebhookDelivery.status)).all())
    failing = session.scalar(select(func.count()).select_from(WebhookDelivery).where(
        WebhookDelivery.status == "pending", WebhookDelivery.attempts > 0)) or 0
    oldest = session.scalar(select(func.min(WebhookDelivery.created_at)).where(
        WebhookDelivery.status == "pending"))
    rows = session.execute(
        select(WebhookDelivery, App.name).join(App, App.id == WebhookDelivery.app_id)
        .where(or_(WebhookDelivery.status == "failed",
                   (WebhookDelivery.status == "pending") & (WebhookDelivery.attempts > 0)))
        .order_by(WebhookDelivery.created_at.desc()).limit(limit)).all()
    return {
        "pending": int(counts.get("pending", 0)), "failing": int(failing),
        "failed": int(counts.get("failed", 0)), "delivered": int(counts.get("delivered", 0)),
        "oldest_pending_age_s": _age_s(now, oldest),
        "deliveries": [{"id": d.id, "event": d.event, "app": app, "status": d.status,
                        "attempts": d.attempts, "last_status_code": d.last_status_code,
                        "last_error": d.last_error, "created_at": _iso(d.created_at),
                        "next_attempt_at": _iso(d.next_attempt_at)
                        if d.status == "pending" else None}
                       for d, app in rows],
    }


def recent_audit(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    rows = session.scalars(select(AuditEntry).order_by(AuditEntry.created_at.desc(),
                                                       AuditEntry.id.desc()).limit(limit))
    return [{"id": a.id, "actor": a.actor, "action": a.action, "target": a.target,
             "detail": a.detail, "created_at": _iso(a.created_at)} for a in rows]


# --- The broker --------------------------------------------------------------------------------


@dataclass
class BrokerQueues:
    """Messages waiting in each queue, straight from the broker."""

    transport: str
    reachable: bool
    queues: dict[str, int] = field(default_factory=dict)
    #: Messages handed to a worker and not yet acknowledged (Redis only).
    reserved: int | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _filesystem_depths(settings: Settings) -> dict[str, int]:
    """Celery's filesystem transport keeps one ``<time>_<uuid>.<queue>.msg`` file per message."""
    folder: Path = settings.broker_dir / "queue"
    counts = dict.fromkeys(QUEUES, 0)
    if not folder.is_dir():
        return counts
    for entry in folder.iterdir():
        queue, _, suffix = entry.name.partition(".")[2].rpartition(".")
        if suffix == "msg" and queue in counts:
            counts[queue] += 1
    return counts


def _redis_depths(settings: Settings) -> tuple[dict[str, int], int]:
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=2,
                                  socket_connect_timeout=2)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(queue)
            for step in REDIS_PRIORITY_STEPS:
                pipe.llen(f"{queue}{REDIS_PRIORITY_SEP}{step}")
        pipe.hlen("unacked")
        sizes = [int(size) for size in pipe.execute()]
    finally:
        client.close()
    per_queue = 1 + len(REDIS_PRIORITY_STEPS)
    depths = {queue: sum(sizes[i * per_queue:(i + 1) * per_queue])
              for i, queue in enumerate(QUEUES)}
    return depths, sizes[-1]


def queue_depths(settings: Settings) -> BrokerQueues:
    """Queue lengths: Redis ``LLEN`` (all priority lists) or message files on disk."""
    if settings.uses_embedded_broker:
        try:
            return BrokerQueues("filesystem", True, _filesystem_depths(settings))
        except OSError as error:
            return BrokerQueues("filesystem", False, error=str(error))
    try:
        depths, reserved = _redis_depths(settings)
    except Exception as error:  # any client error means "cannot tell"; shown, not raised
        log.warning("cannot read queue lengths from the broker: %s", error)
        return BrokerQueues("redis", False, error=f"{type(error).__name__}: {error}")
    return BrokerQueues("redis", True, depths, reserved)


def broadcast_supported(connection: Any) -> bool:
    """Whether the transport can broadcast, which Celery's remote control needs.

    kombu's virtual transports say so with ``fanout`` among the exchange types they
    implement (Redis does; kombu's filesystem transport does, through its control
    folder; SQS and the SQLAlchemy transport do not).
    """
    implements = getattr(connection.transport, "implements", None)
    kinds = getattr(implements, "exchange_type", None)
    return kinds is None or "fanout" in kinds


def worker_liveness(celery: Any, timeout_s: float = 1.0, *,
                    parallel: bool = True) -> dict[str, Any]:
    """Ask every worker, through Celery's remote control, ``ping`` and ``active``.

    With ``parallel`` both broadcasts run at once, so the call takes about
    ``timeout_s``. kombu's filesystem transport cannot bind two reply queues at the
    same moment (a reader can find the exchange file empty), so for it the caller
    asks one after the other. A worker that does not answer within the timeout is not
    listed; no answer at all is reported as such.
    """
    with celery.connection_for_read() as connection:
        transport = connection.transport_cls if isinstance(connection.transport_cls, str) \
            else type(connection.transport).__name__
        if not broadcast_supported(connection):
            return {"broadcast": False, "transport": transport, "workers": [],
                    "error": f"the {transport} broker transport cannot broadcast, so "
                             f"workers cannot be asked whether they are alive"}

    def ask(method: str) -> dict[str, Any]:
        inspector = celery.control.inspect(timeout=timeout_s)
        answer: dict[str, Any] | None = getattr(inspector, method)()
        return answer or {}

    try:
        if parallel:
            with ThreadPoolExecutor(max_workers=2) as pool:
                pings, actives = pool.map(ask, ["ping", "active"])
        else:
            pings, actives = ask("ping"), ask("active")
    except Exception as error:
        log.warning("cannot ask the workers: %s", error)
        return {"broadcast": True, "transport": transport, "workers": [],
                "error": f"{type(error).__name__}: {error}"}
    workers = []
    for name in sorted(set(pings) | set(actives)):
        active = actives.get(name) or []
        workers.append({
            "name": name, "ping": bool(pings.get(name, {}).get("ok") == "pong"),
            "active": [{"id": task.get("id"), "task": task.get("name"),
                        "args": task.get("args"), "started": task.get("time_start")}
                       for task in active]})
    return {"broadcast": True, "transport": transport, "workers": workers,
            "error": None if workers else f"no worker answered within {timeout_s:g} s"}


# --- Everything at once ----------------------------------------------------------------------


def overview(session: Session, settings: Settings, now: datetime | None = None,
             depths: Callable[[Settings], BrokerQueues] = queue_depths) -> dict[str, Any]:
    """The console's whole picture (worker liveness apart: it waits on the broker)."""
    now = now or utcnow()
    return {
        "generated_at": now.isoformat(),
        "broker": depths(settings).as_json(),
        "uploads": uploads_by_status(session),
        "jobs": jobs_by_status_and_stage(session),
        "throughput": throughput(session, now),
        "stage_durations": stage_durations(session, now),
        "oldest_waiting": oldest_waiting(session, now),
        "waiting": waiting_jobs(session, now),
        "stalled": stalled_jobs(session, now),
        "failures": failures(session, now),
        "flagged": flagged_uploads(session),
        "webhooks": webhook_backlog(session, now),
        "audit": recent_audit(session),
    }


# --- Actions -----------------------------------------------------------------------------------


class ActionRefused(Exception):
    """The action does not apply to this job or delivery; the message says why."""


class TargetNotFound(ActionRefused):
    """There is no such job or delivery."""


@dataclass(frozen=True)
class ActionResult:
    """What an action changed, and what to send once the transaction has committed."""

    message: str
    wake_uploads: list[str] = field(default_factory=list)
    #: The ``log_id`` of each upload to wake, so the job's lines keep its first request's id.
    log_ids: dict[str, str | None] = field(default_factory=dict)
    wake_webhooks: list[int] = field(default_factory=list)
    delete_keys: list[str] = field(default_factory=list)


def _audit(session: Session, operator: str, action: str, target: str,
           detail: dict[str, Any] | None = None) -> None:
    session.add(AuditEntry(actor=operator, action=action, target=target, detail=detail))
    log.info("operator %s: %s %s", operator, action, target)


def _upload(session: Session, upload_id: str) -> Upload:
    upload = session.get(Upload, upload_id)
    if upload is None:
        raise TargetNotFound(f"there is no upload {upload_id}")
    return upload


def retry_upload(session: Session, upload_id: str, operator: str) -> ActionResult:
    """Put a job that FAILED with ``internal`` back in the queue (attempts reset)."""
    upload = _upload(session, upload_id)
    if upload.status != UploadStatus.FAILED or upload.fail_reason != FailReason.INTERNAL:
        raise ActionRefused(
            f"only jobs that failed with internal can be retried; {upload_id} is "
            f"{upload.status}{'/' + upload.fail_reason if upload.fail_reason else ''}")
    previous = {"attempts": upload.attempts, "error_detail": (upload.error_detail or "")[:500]}
    if not jobs.reset_for_retry(session, upload_id):
        raise ActionRefused(f"{upload_id} changed meanwhile; reload and try again")
    _audit(session, operator, "upload.retry", upload_id, previous)
    return ActionResult(f"{upload_id} is back in the queue.", wake_uploads=[upload_id],
                        log_ids={upload_id: upload.log_id})


def cancel_upload(session: Session, upload_id: str, operator: str, *,
                  secret_key: str) -> ActionResult:
    """End a job that is waiting for a worker as FAILED/``upload_cancelled``.

    A job a worker is running is refused: its lease says a worker owns it right now.
    The creator is told, and the app gets its ``sound.upload.failed`` webhook.
    """
    upload = _upload(session, upload_id)
    if upload.status != UploadStatus.PROCESSING or upload.lease_owner is not None:
        state = (f"being processed by {upload.lease_owner}" if upload.lease_owner
                 else upload.status)
        raise ActionRefused(f"only jobs waiting in the queue can be cancelled; {upload_id} "
                            f"is {state}")
    # A guarded write that changes nothing but takes the row's write lock while the job
    # is still waiting: a worker's claim then waits for this transaction and finds the
    # job FAILED, instead of slipping in between the check above and the change below.
    locked = session.execute(
        update(Upload).where(Upload.id == upload_id, *_waiting())
        .values(lease_expires_at=None).execution_options(synchronize_session=False))
    if locked.rowcount != 1 or not jobs.fail(  # type: ignore[attr-defined]
            session, upload_id, FailReason.CANCELLED, f"cancelled by operator {operator}",
            secret_key=secret_key):
        raise ActionRefused(f"{upload_id} changed meanwhile; reload and try again")
    _audit(session, operator, "upload.cancel", upload_id, {"stage": upload.stage})
    session.flush()
    deliveries = list(session.scalars(select(WebhookDelivery.id).where(
        WebhookDelivery.dedupe_key == f"sound.upload.failed:{upload_id}",
        WebhookDelivery.status == "pending")))
    keys = [upload.incoming_key] if upload.incoming_key else []
    return ActionResult(f"{upload_id} was cancelled.", wake_webhooks=deliveries,
                        delete_keys=keys)


def resend_webhook(session: Session, delivery_id: int, operator: str) -> ActionResult:
    """Send a delivery again now, whatever its state (receivers de-duplicate)."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise TargetNotFound(f"there is no webhook delivery {delivery_id}")
    previous = {"status": delivery.status, "attempts": delivery.attempts,
                "last_status_code": delivery.last_status_code, "event": delivery.event}
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                    .values(status="pending", next_attempt_at=utcnow(), delivered_at=None)
                    .execution_options(synchronize_session=False))
    _audit(session, operator, "webhook.resend", str(delivery_id), previous)
    return ActionResult(f"Webhook {delivery_id} ({delivery.event}) will be sent again.",
                        wake_webhooks=[delivery_id])
