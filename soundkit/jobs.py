"""The upload job's state machine, saved on its row.

::

    PROCESSING_UPLOAD ──bytes stored──▶ PROCESSING ──attached──▶ IN_LIBRARY
           │                               │
           └──────────── refused / removed / gave up ──────────▶ FAILED

Inside ``PROCESSING`` the ``stage`` column walks queued → validating → transcoding →
fingerprinting → storing → attaching → done. Every change that matters is a
compare-and-set (``UPDATE … WHERE`` the state we expect) so two workers holding the
same message, or a worker racing a creator's *Remove access*, cannot both win: the
loser's update matches no row and it stops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from soundkit import webhooks
from soundkit.models import (
    FailReason,
    Notification,
    Stage,
    StageRun,
    Upload,
    UploadStatus,
    utcnow,
)

log = logging.getLogger(__name__)

FINAL_STATUSES = (UploadStatus.IN_LIBRARY, UploadStatus.FAILED)
UNFINISHED_STATUSES = (UploadStatus.PROCESSING_UPLOAD, UploadStatus.PROCESSING_DOWNLOAD,
                       UploadStatus.PROCESSING)

#: What a creator reads for each ``fail_reason`` (the library and notifications).
FAIL_REASON_WORDS: dict[str, str] = {
    FailReason.FILE_FORMAT: "The file is not a supported audio format.",
    FailReason.DURATION: "The sound must be between 5 seconds and 10 minutes long.",
    FailReason.FILE_SIZE: "The file is larger than the upload limit.",
    FailReason.DUPLICATE: "This sound is already in a library.",
    FailReason.COPYRIGHT: "This sound matches protected music.",
    FailReason.AUTH_REMOVED: "You removed this app's access before the sound was ready.",
    FailReason.CANCELLED: "The upload was cancelled.",
    FailReason.INTERNAL: "Something went wrong on our side while processing the sound.",
}


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job for one attempt."""

    upload_id: str
    owner: str
    attempt: int


def claim(session: Session, upload_id: str, owner: str, lease_s: int,
          now: datetime | None = None) -> Claim | None:
    """Take the job if it is PROCESSING and nobody holds a live lease on it.

    Returns None when the job is finished, unknown, or leased by someone else: a
    replayed or duplicated message does nothing.
    """
    now = now or utcnow()
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == UploadStatus.PROCESSING,
               or_(Upload.lease_expires_at.is_(None), Upload.lease_expires_at < now))
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_s),
                attempts=Upload.attempts + 1, updated_at=now)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    attempts = session.execute(select(Upload.attempts).where(Upload.id == upload_id)).scalar_one()
    return Claim(upload_id, owner, attempts)


def _owned(upload_id: str, owner: str) -> list[Any]:
    return [Upload.id == upload_id, Upload.status == UploadStatus.PROCESSING,
            Upload.lease_owner == owner]


def renew(session: Session, job: Claim, stage: Stage, lease_s: int) -> bool:
    """Extend the lease and record the stage; False if the job was taken away."""
    now = utcnow()
    result = session.execute(
        update(Upload).where(*_owned(job.upload_id, job.owner))
        .values(stage=stage, lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now)
        .execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, job: Claim, error_detail: str | None = None) -> None:
    """Give the lease back so the retry (or the reconciler) can claim the job again."""
    values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None,
                              "updated_at": utcnow()}
    if error_detail is not None:
        values["error_detail"] = error_detail[:8000]
    session.execute(update(Upload).where(*_owned(job.upload_id, job.owner)).values(**values)
                    .execution_options(synchronize_session=False))


def record_stage(session: Session, upload_id: str, stage: Stage, attempt: int,
                 started_at: datetime, outcome: str) -> None:
    session.add(StageRun(upload_id=upload_id, stage=stage, attempt=attempt,
                         started_at=started_at, finished_at=utcnow(), outcome=outcome))


def fail(session: Session, upload_id: str, reason: FailReason, detail: str | None,
         *, owner: str | None = None, secret_key: str,
         match_detail: dict[str, Any] | None = None,
         duplicate_of: str | None = None) -> bool:
    """End an unfinished job as FAILED, tell the creator and queue the app's webhook.

    With ``owner`` the change only happens while that worker still holds the lease.
    Returns False (and changes nothing) if the job had already ended.
    """
    now = utcnow()
    conditions: list[Any] = [Upload.id == upload_id, Upload.status.in_(UNFINISHED_STATUSES)]
    if owner is not None:
        conditions.append(Upload.lease_owner == owner)
    values: dict[str, Any] = {
        "status": UploadStatus.FAILED, "fail_reason": reason, "lease_owner": None,
        "lease_expires_at": None, "finished_at": now, "updated_at": now,
        "match_detail": match_detail, "duplicate_of_sound_id": duplicate_of}
    if detail is not None:
        values["error_detail"] = detail[:8000]
    result = session.execute(update(Upload).where(*conditions).values(**values)
                             .execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    upload = session.get(Upload, upload_id)
    assert upload is not None
    session.refresh(upload)
    title = upload.title or upload.original_filename or "Your sound"
    session.add(Notification(user_id=upload.user_id, kind="upload.failed", upload_id=upload_id,
                             message=f"{title}: {FAIL_REASON_WORDS[reason]}"))
    if reason != FailReason.AUTH_REMOVED:  # the app was told its access is gone instead
        webhooks.queue_event(session, upload.app, upload.user_id, "sound.upload.failed",
                             {"upload_id": upload_id, "reason": str(reason)},
                             dedupe_key=f"sound.upload.failed:{upload_id}",
                             secret_key=secret_key)
    log.info("upload %s failed: %s", upload_id, reason)
    return True


def mark_received(session: Session, upload_id: str, *, size: int, sha256: str) -> bool:
    """The api stored every byte: the job becomes PROCESSING/queued."""
    now = utcnow()
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == UploadStatus.PROCESSING_UPLOAD)
        .values(status=UploadStatus.PROCESSING, stage=Stage.QUEUED, size_bytes=size,
                uploaded_bytes=size, sha256=sha256, wakeup_sent_at=now, updated_at=now)
        .execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def reset_for_retry(session: Session, upload_id: str) -> bool:
    """An operator's retry: a job that FAILED with ``internal`` goes back to the queue."""
    now = utcnow()
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == UploadStatus.FAILED,
               Upload.fail_reason == FailReason.INTERNAL)
        .values(status=UploadStatus.PROCESSING, stage=Stage.QUEUED, fail_reason=None,
                attempts=0, lease_owner=None, lease_expires_at=None, finished_at=None,
                wakeup_sent_at=now, updated_at=now)
        .execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ReconcileReport:
    resend: list[str]
    gave_up: list[str]
    abandoned: list[str]


def reconcile(session: Session, *, max_attempts: int, wakeup_grace_s: float,
              abandoned_upload_s: float, secret_key: str,
              now: datetime | None = None) -> ReconcileReport:
    """Find jobs the broker may have lost and decide what to do with each.

    - PROCESSING, no live lease, no wake-up for ``wakeup_grace_s``: send it again.
    - PROCESSING, no live lease, ``max_attempts`` claims used: FAILED/internal.
    - PROCESSING_UPLOAD older than ``abandoned_upload_s``: the api died mid-stream;
      FAILED/upload_cancelled.
    The caller commits, then sends the wake-ups in ``resend``.
    """
    now = now or utcnow()
    idle = (Upload.status == UploadStatus.PROCESSING,
            or_(Upload.lease_expires_at.is_(None), Upload.lease_expires_at < now))
    exhausted = session.scalars(
        select(Upload.id).where(*idle, Upload.attempts >= max_attempts)).all()
    gave_up = [uid for uid in exhausted
               if fail(session, uid, FailReason.INTERNAL,
                       f"gave up after {max_attempts} attempts", secret_key=secret_key)]
    stale = now - timedelta(seconds=wakeup_grace_s)
    resend = list(session.scalars(
        select(Upload.id).where(*idle, Upload.attempts < max_attempts,
                                or_(Upload.wakeup_sent_at.is_(None),
                                    Upload.wakeup_sent_at < stale))
        .order_by(Upload.created_at).limit(500)).all())
    if resend:
        session.execute(update(Upload).where(Upload.id.in_(resend))
                        .values(wakeup_sent_at=now)
                        .execution_options(synchronize_session=False))
    cutoff = now - timedelta(seconds=abandoned_upload_s)
    stuck = session.scalars(select(Upload.id).where(
        Upload.status == UploadStatus.PROCESSING_UPLOAD, Upload.updated_at < cutoff)).all()
    abandoned = [uid for uid in stuck
                 if fail(session, uid, FailReason.CANCELLED,
                         "the upload stopped before every byte arrived",
                         secret_key=secret_key)]
    return ReconcileReport(resend=resend, gave_up=gave_up, abandoned=abandoned)
