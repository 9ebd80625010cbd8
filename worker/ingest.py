"""One upload's journey through the worker: claim, stages, attach.

Each stage is idempotent, so a job that is re-run after a crash simply starts
again from the bytes in ``incoming/``: objects have deterministic keys
(``sounds/{sound_id}/…``) and are overwritten, and the attach step is a single
transaction guarded by the lease and by ``sounds.upload_id`` being unique. Nothing
a stage does is visible to the creator or the app until attach commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from pipelines import (
    MediaProcessingError,
    MediaRejected,
    ProbeResult,
    ProcessedMedia,
    job_workdir,
    probe,
    process,
)
from soundkit import jobs, webhooks
from soundkit.jobs import Claim
from soundkit.logs import log_context
from soundkit.models import (
    FailReason,
    Notification,
    Sound,
    Stage,
    Upload,
    UploadStatus,
    WebhookDelivery,
    utcnow,
)
from soundkit.storage import StorageUnavailable
from worker.runtime import Runtime

log = logging.getLogger(__name__)


class JobLost(Exception):
    """The lease was taken away (access removed, cancelled, or expired and re-claimed)."""


@dataclass
class JobContext:
    """What the stages share while one attempt runs."""

    rt: Runtime
    claim: Claim
    upload_id: str
    app_id: int
    user_id: int
    title: str | None
    original_filename: str | None
    incoming_key: str
    sha256: str
    workdir: Path
    source: Path = field(init=False)
    probed: ProbeResult | None = None
    media: ProcessedMedia | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.source = self.workdir / "source"

    @property
    def sound_id(self) -> str:
        """Derived from the upload id, so a re-run writes the same keys and row."""
        return "snd_" + self.upload_id.removeprefix("upl_")


@dataclass(frozen=True)
class Refusal:
    """A policy decision that ends the job (duplicate, copyright)."""

    reason: FailReason
    detail: str
    match_detail: dict[str, Any] | None = None
    duplicate_of: str | None = None


class FingerprintPolicy(Protocol):
    """The fingerprint stage: look the sound up, decide, and index it on attach.

    ``on_attach`` runs inside the attach transaction and may still refuse: a sound
    that got in between ``check`` and attach (another worker's upload of the same
    music) must not let both in.
    """

    def check(self, ctx: JobContext) -> Refusal | None: ...
    def on_attach(self, session: Session, ctx: JobContext) -> Refusal | None: ...


class NoFingerprinting:
    """Accepts everything; used until an index is configured."""

    def check(self, ctx: JobContext) -> Refusal | None:
        return None

    def on_attach(self, session: Session, ctx: JobContext) -> Refusal | None:
        return None


class _RefusedAtAttach(Exception):
    """Raised inside the attach transaction to roll it back and fail the job instead."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


_policy_factory: Callable[[Runtime], FingerprintPolicy] = lambda rt: NoFingerprinting()  # noqa: E731


def set_policy_factory(factory: Callable[[Runtime], FingerprintPolicy]) -> None:
    global _policy_factory
    _policy_factory = factory


@contextmanager
def stage(ctx: JobContext, name: Stage) -> Iterator[None]:
    """Renew the lease, run the stage, and record how long it took and how it ended."""
    rt = ctx.rt
    with rt.db.session() as session:
        if not jobs.renew(session, ctx.claim, name, rt.settings.job_lease_s):
            raise JobLost(ctx.upload_id)
    started: datetime = utcnow()
    outcome = "error"
    clock = time.monotonic()
    try:
        yield
        outcome = "ok"
    except MediaRejected:
        outcome = "rejected"
        raise
    finally:
        with rt.db.session() as session:
            jobs.record_stage(session, ctx.upload_id, name, ctx.claim.attempt, started, outcome)
        log.info("stage %s %s in %.2f s", name, outcome, time.monotonic() - clock,
                 extra={"stage": str(name), "outcome": outcome})


def _validate(ctx: JobContext) -> None:
    ctx.rt.store.download(ctx.incoming_key, ctx.source)
    ctx.probed = probe(ctx.source, ctx.rt.limits)


def _transcode(ctx: JobContext) -> None:
    assert ctx.probed is not None
    ctx.media = process(ctx.source, ctx.probed, ctx.workdir, ctx.rt.limits)


def object_keys(sound_id: str) -> dict[str, str]:
    base = f"sounds/{sound_id}"
    return {"playback": f"{base}/playback.m4a", "preview": f"{base}/preview.m4a",
            "waveform": f"{base}/waveform.json"}


def _store(ctx: JobContext) -> None:
    assert ctx.media is not None
    keys = object_keys(ctx.sound_id)
    store = ctx.rt.store
    store.put_file(keys["playback"], ctx.media.playback, "audio/mp4")
    store.put_file(keys["preview"], ctx.media.preview, "audio/mp4")
    store.put_file(keys["waveform"], ctx.media.waveform, "application/json")


def _title(ctx: JobContext) -> str:
    if ctx.title:
        return ctx.title
    stem = Path(ctx.original_filename or "").stem.strip()
    return (stem or "Untitled sound")[:150]


def _attach(ctx: JobContext, policy: FingerprintPolicy) -> list[int]:
    """Attach, or fail the job if the policy refuses at the last moment."""
    try:
        return _attach_transaction(ctx, policy)
    except _RefusedAtAttach as refused:
        delivery_ids = _fail(ctx, refused.refusal)
        _remove_stored(ctx)
        return delivery_ids


def _attach_transaction(ctx: JobContext, policy: FingerprintPolicy) -> list[int]:
    """The one transaction that makes the sound visible; returns webhook ids to send."""
    assert ctx.media is not None and ctx.probed is not None
    media, probed, keys = ctx.media, ctx.probed, object_keys(ctx.sound_id)
    now = utcnow()
    with ctx.rt.db.session() as session:
        won = session.execute(
            update(Upload)
            .where(Upload.id == ctx.upload_id, Upload.status == UploadStatus.PROCESSING,
                   Upload.lease_owner == ctx.claim.owner)
            .values(status=UploadStatus.IN_LIBRARY, stage=Stage.DONE, sound_id=ctx.sound_id,
                    lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now)
            .execution_options(synchronize_session=False))
        if won.rowcount != 1:  # type: ignore[attr-defined]
            raise JobLost(ctx.upload_id)
        title = _title(ctx)
        session.add(Sound(
            id=ctx.sound_id, owner_id=ctx.user_id, app_id=ctx.app_id, upload_id=ctx.upload_id,
            title=title, duration_ms=round(media.duration_s * 1000),
            sample_rate=probed.sample_rate, channels=probed.channels,
            source_codec=probed.codec, integrated_lufs=media.loudness.integrated_lufs,
            true_peak_dbtp=media.loudness.true_peak_dbtp, lra=media.loudness.lra,
            original_key=ctx.incoming_key, playback_key=keys["playback"],
            preview_key=keys["preview"], waveform_key=keys["waveform"], sha256=ctx.sha256,
            created_at=now))
        session.add(Notification(user_id=ctx.user_id, kind="sound.ready",
                                 upload_id=ctx.upload_id, sound_id=ctx.sound_id,
                                 message=f"{title} is in your library."))
        refusal = policy.on_attach(session, ctx)
        if refusal is not None:
            raise _RefusedAtAttach(refusal)
        upload = session.get(Upload, ctx.upload_id)
        assert upload is not None
        webhooks.queue_event(session, upload.app, ctx.user_id, "sound.upload.complete",
                             {"upload_id": ctx.upload_id, "sound_id": ctx.sound_id},
                             dedupe_key=f"sound.upload.complete:{ctx.upload_id}",
                             secret_key=ctx.rt.settings.secret_key)
        return _delivery_ids(session, f"sound.upload.complete:{ctx.upload_id}")


def _delivery_ids(session: Session, dedupe_key: str) -> list[int]:
    session.flush()
    return list(session.scalars(select(WebhookDelivery.id)
                                .where(WebhookDelivery.dedupe_key == dedupe_key)))


def _clean_after_loss(ctx: JobContext) -> None:
    """Remove what this attempt stored, but only if the job ended FAILED meanwhile.

    A lease can also be lost by expiring while another worker re-claimed the job; that
    worker writes the same keys, so its objects must not be deleted from under it.
    """
    with ctx.rt.db.session() as session:
        status = session.scalar(select(Upload.status).where(Upload.id == ctx.upload_id))
    if status != UploadStatus.FAILED:
        return
    _remove_stored(ctx)


def _remove_stored(ctx: JobContext) -> None:
    """Delete the playback, preview and waveform objects of a job that ended FAILED."""
    for key in object_keys(ctx.sound_id).values():
        ctx.rt.store.delete(key)


def _fail(ctx: JobContext, refusal: Refusal) -> list[int]:
    with ctx.rt.db.session() as session:
        done = jobs.fail(session, ctx.upload_id, refusal.reason, refusal.detail,
                         owner=ctx.claim.owner, secret_key=ctx.rt.settings.secret_key,
                         match_detail=refusal.match_detail, duplicate_of=refusal.duplicate_of)
        if not done:
            raise JobLost(ctx.upload_id)
        return _delivery_ids(session, f"sound.upload.failed:{ctx.upload_id}")


def _run_stages(ctx: JobContext) -> list[int]:
    policy = _policy_factory(ctx.rt)
    with stage(ctx, Stage.VALIDATING):
        _validate(ctx)
    with stage(ctx, Stage.TRANSCODING):
        _transcode(ctx)
    with stage(ctx, Stage.FINGERPRINTING):
        refusal = policy.check(ctx)
    if refusal is not None:
        return _fail(ctx, refusal)
    with stage(ctx, Stage.STORING):
        _store(ctx)
    with stage(ctx, Stage.ATTACHING):
        return _attach(ctx, policy)


def _load_context(rt: Runtime, job: Claim, workdir: Path) -> JobContext:
    with rt.db.session() as session:
        upload = session.get(Upload, job.upload_id)
        assert upload is not None and upload.incoming_key and upload.sha256
        return JobContext(rt=rt, claim=job, upload_id=upload.id, app_id=upload.app_id,
                          user_id=upload.user_id, title=upload.title,
                          original_filename=upload.original_filename,
                          incoming_key=upload.incoming_key, sha256=upload.sha256,
                          workdir=workdir)


def _log_id(rt: Runtime, upload_id: str) -> str | None:
    with rt.db.session() as session:
        upload = session.get(Upload, upload_id)
        return upload.log_id if upload else None


#: Errors that say nothing about the sound: retry soon, with backoff.
TRANSIENT: tuple[type[BaseException], ...] = (StorageUnavailable, OperationalError,
                                               InterfaceError)


class TransientFailure(Exception):
    """Raised to the task so Celery retries it with backoff."""


def run(rt: Runtime, upload_id: str) -> str:
    """Process one upload if it can be claimed; returns what happened.

    Bad media ends the job at once. Any other error releases the lease and records
    the error on the row; the job ends FAILED/internal once it has used
    ``SOUNDKIT_MAX_ATTEMPTS`` claims. Transient errors are re-raised as
    :class:`TransientFailure` for a quick retry; others wait for the reconciler,
    which spaces attempts out.
    """
    with rt.db.session() as session:
        job = jobs.claim(session, upload_id, rt.worker_id, rt.settings.job_lease_s)
    if job is None:
        return "skipped"
    with log_context(_log_id(rt, upload_id), upload_id):
        if job.attempt > rt.settings.max_attempts:
            _fail_internal(rt, job, f"gave up after {rt.settings.max_attempts} attempts")
            return "failed"
        try:
            deliveries = _attempt(rt, job)
        except JobLost:
            log.info("job %s was taken away; stopping", upload_id)
            return "lost"
        except Exception as error:
            return _after_error(rt, job, error)
        for delivery_id in deliveries:
            rt.dispatcher.wake_webhook(delivery_id)
        return "done"


def _attempt(rt: Runtime, job: Claim) -> list[int]:
    with job_workdir(None) as workdir:
        ctx = _load_context(rt, job, workdir)
        try:
            return _run_stages(ctx)
        except MediaRejected as rejected:
            return _fail(ctx, Refusal(FailReason(rejected.reason), rejected.detail))
        except JobLost:
            _clean_after_loss(ctx)
            raise


def _after_error(rt: Runtime, job: Claim, error: Exception) -> str:
    detail = (error.detail if isinstance(error, MediaProcessingError)
              else f"{type(error).__name__}: {error}")
    log.warning("attempt %d of %s failed: %s", job.attempt, job.upload_id, detail,
                exc_info=not isinstance(error, MediaProcessingError))
    if job.attempt >= rt.settings.max_attempts:
        _fail_internal(rt, job, detail)
        return "failed"
    with rt.db.session() as session:
        jobs.release(session, job, detail)
    if isinstance(error, TRANSIENT):
        raise TransientFailure(detail) from error
    return "released"


def _fail_internal(rt: Runtime, job: Claim, detail: str) -> None:
    with rt.db.session() as session:
        jobs.fail(session, job.upload_id, FailReason.INTERNAL, detail, owner=job.owner,
                  secret_key=rt.settings.secret_key)
