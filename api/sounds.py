"""Sound Kit: upload a track, fetch its status, list the sounds an app added.

The upload view never decodes audio and never holds the file in memory: it parses
the multipart body as it arrives and streams the ``sound_file`` part straight into
the object store, hashing and counting as it goes and stopping at the size limit.
Only after the job row is committed does it send the worker's wake-up.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from api.auth import Caller, caller, require_scopes
from api.envelope import ApiError, envelope, log_id
from api.services import services
from soundkit import jobs
from soundkit.models import FailReason, Sound, Upload, UploadStatus, new_public_id
from soundkit.storage import LimitedHashingWriter, ObjectTooLarge

bp = Blueprint("sounds", __name__)

CHUNK = 256 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, headers and the title field
MAX_TITLE = 150
MAX_FIELD_BYTES = 4096
MAX_PARTS = 16
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
DEFAULT_PAGE, MAX_PAGE = 20, 50


@dataclass
class ReceivedForm:
    """What the multipart body carried besides the file's bytes."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    content_type: str | None = None
    file_bytes: int = 0


def _find_idempotent(caller_: Caller, key: str) -> str | None:
    with services().db.session() as session:
        return session.scalar(select(Upload.id).where(
            Upload.app_id == caller_.app_id, Upload.user_id == caller_.user_id,
            Upload.idempotency_key == key))


def _boundary() -> bytes:
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    if mimetype != "multipart/form-data" or not options.get("boundary"):
        raise ApiError("unsupported_media_type",
                       "send the sound as multipart/form-data with a sound_file part")
    return options["boundary"].encode("latin-1")


def _body_chunks() -> Iterator[bytes]:
    stream = request.stream
    while chunk := stream.read(CHUNK):
        yield chunk


def _stream_multipart(writer: LimitedHashingWriter) -> ReceivedForm:
    """Feed the body through a multipart decoder; file bytes go to ``writer``."""
    # The decoder's limit bounds what it buffers between our reads (part headers,
    # a chunk in flight); small fields are bounded separately below.
    decoder = MultipartDecoder(_boundary(), max_form_memory_size=2 * CHUNK + MAX_FIELD_BYTES,
                               max_parts=MAX_PARTS)
    form = ReceivedForm()
    current: str | None = None  # name of the part being read
    buffer = bytearray()
    seen_file = False

    def drain() -> bool:
        nonlocal current, seen_file
        while True:
            event = decoder.next_event()
            if isinstance(event, NeedData):
                return False
            if isinstance(event, Epilogue):
                return True
            if isinstance(event, File) and event.name == "sound_file" and not seen_file:
                current, seen_file = "sound_file", True
                form.filename = event.filename
                form.content_type = event.headers.get("Content-Type")
            elif isinstance(event, Field | File):
                current = event.name if isinstance(event, Field) else None
                buffer.clear()
            elif isinstance(event, Data):
                if current == "sound_file":
                    writer.write(event.data)
                    form.file_bytes += len(event.data)
                elif current is not None:
                    buffer.extend(event.data)
                    if len(buffer) > MAX_FIELD_BYTES:
                        raise ApiError("invalid_params", f"field {current} is too long")
                    if not event.more_data:
                        form.fields[current] = buffer.decode("utf-8", errors="replace")

    try:
        for chunk in _body_chunks():
            decoder.receive_data(chunk)
            if drain():
                break
        else:
            decoder.receive_data(None)
            drain()
    except (ValueError, RequestEntityTooLarge) as error:
        raise ApiError("invalid_params", f"malformed multipart body: {error}") from None
    if not seen_file:
        raise ApiError("invalid_params", "the sound_file part is missing")
    if form.file_bytes == 0:
        raise ApiError("invalid_params", "sound_file is empty")
    return form


def _clean_title(form: ReceivedForm) -> str | None:
    title = form.fields.get("title", "").strip()
    if len(title) > MAX_TITLE:
        raise ApiError("invalid_params", f"title must be at most {MAX_TITLE} characters")
    return title or None


def _create_row(caller_: Caller, key: str | None, content_length: int | None) -> str | None:
    """Insert the job as PROCESSING_UPLOAD; None if the idempotency key won a race."""
    upload_id = new_public_id("upl")
    upload = Upload(id=upload_id, app_id=caller_.app_id, user_id=caller_.user_id,
                    idempotency_key=key, log_id=log_id(), incoming_key=f"incoming/{upload_id}",
                    status=UploadStatus.PROCESSING_UPLOAD)
    try:
        with services().db.session() as session:
            session.add(upload)
    except IntegrityError:
        return None
    return upload.id


def _discard(upload_id: str, incoming_key: str) -> None:
    """Forget an upload whose request was malformed: no row, no object."""
    services().store.delete(incoming_key)
    with services().db.session() as session:
        row = session.get(Upload, upload_id)
        if row is not None:
            session.delete(row)


def _fail(upload_id: str, reason: FailReason, detail: str) -> None:
    svc = services()
    svc.store.delete(f"incoming/{upload_id}")
    with svc.db.session() as session:
        jobs.fail(session, upload_id, reason, detail, secret_key=svc.settings.secret_key)


@bp.post("/v2/sound/upload/")
@require_scopes("sound.upload")
def upload() -> Response:
    svc, who = services(), caller()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise ApiError("invalid_params", "Idempotency-Key must be 1-255 printable characters")
    if key and (existing := _find_idempotent(who, key)):
        return envelope({"upload_id": existing})
    limit = svc.settings.max_upload_bytes
    _boundary()
    if request.content_length and request.content_length > limit + MULTIPART_OVERHEAD:
        raise ApiError("file_too_large", f"the upload limit is {limit} bytes")

    upload_id = _create_row(who, key, request.content_length)
    if upload_id is None:  # a concurrent request with the same key created it
        return envelope({"upload_id": _find_idempotent(who, key or "")})
    incoming_key = f"incoming/{upload_id}"
    writer = LimitedHashingWriter(svc.store.open_writer(incoming_key, "application/octet-stream"),
                                  limit)
    try:
        form = _stream_multipart(writer)
        title = _clean_title(form)
        writer.commit()
    except ObjectTooLarge:
        writer.abort()
        _fail(upload_id, FailReason.FILE_SIZE, f"more than {limit} bytes")
        raise ApiError("file_too_large", f"the upload limit is {limit} bytes",
                       data={"upload_id": upload_id}) from None
    except ClientDisconnected:
        writer.abort()
        _fail(upload_id, FailReason.CANCELLED, "the client went away during the upload")
        raise
    except BaseException:  # a malformed request leaves no trace
        writer.abort()
        _discard(upload_id, incoming_key)
        raise

    with svc.db.session() as session:
        row = session.get(Upload, upload_id)
        assert row is not None
        row.title = title
        row.original_filename = (form.filename or "")[:255] or None
        row.content_type = (form.content_type or "")[:255] or None
        session.flush()
        jobs.mark_received(session, upload_id, size=writer.bytes_written,
                           sha256=writer.sha256.hexdigest())
    # After commit; the reconciler covers a lost send.
    svc.dispatcher.wake_upload(upload_id, log_id())
    return envelope({"upload_id": upload_id}, status=202)


def _owned_upload(session: Session, who: Caller, upload_id: object) -> Upload:
    if not isinstance(upload_id, str) or not upload_id:
        raise ApiError("invalid_params", "upload_id is required")
    upload: Upload | None = session.get(Upload, upload_id)
    if upload is None or upload.app_id != who.app_id or upload.user_id != who.user_id:
        raise ApiError("not_found", "no such upload")
    return upload


@bp.post("/v2/sound/status/fetch/")
@require_scopes("sound.upload", "sound.list")
def status_fetch() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("invalid_params", 'send JSON like {"upload_id": "upl_…"}')
    with services().db.session() as session:
        upload = _owned_upload(session, caller(), body.get("upload_id"))
        sound_id = upload.sound_id or (upload.duplicate_of_sound_id
                                       if upload.fail_reason == FailReason.DUPLICATE else None)
        return envelope({
            "upload_id": upload.id, "status": upload.status, "stage": upload.stage,
            "fail_reason": upload.fail_reason, "sound_id": sound_id,
            "uploaded_bytes": upload.uploaded_bytes,
        })


def encode_cursor(created_at: datetime, sound_id: str) -> str:
    raw = f"{created_at.isoformat()}|{sound_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, sound_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), sound_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError("invalid_params", "cursor is not one this API returned") from None


def _page_size() -> int:
    raw = request.args.get("max_count", str(DEFAULT_PAGE))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError("invalid_params", f"max_count must be 1-{MAX_PAGE}")
    return int(raw)


def sound_json(sound: Sound) -> dict[str, Any]:
    """A sound as apps see it, with signed, expiring URLs."""
    svc = services()
    ttl = svc.settings.url_ttl_s
    return {
        "sound_id": sound.id, "upload_id": sound.upload_id, "title": sound.title,
        "duration_ms": sound.duration_ms,
        "created_at": int(sound.created_at.timestamp()),
        "playback_url": svc.store.signed_url(sound.playback_key, ttl, "audio/mp4"),
        "preview_url": svc.store.signed_url(sound.preview_key, ttl, "audio/mp4"),
        "waveform_url": svc.store.signed_url(sound.waveform_key, ttl, "application/json"),
        "loudness": {"integrated_lufs": sound.integrated_lufs,
                     "true_peak_dbtp": sound.true_peak_dbtp, "lra": sound.lra},
    }


@bp.get("/v2/sound/list/")
@require_scopes("sound.list")
def sound_list() -> Response:
    who, size = caller(), _page_size()
    query = (select(Sound).where(Sound.app_id == who.app_id, Sound.owner_id == who.user_id)
             .order_by(Sound.created_at.desc(), Sound.id.desc()).limit(size + 1))
    if cursor := request.args.get("cursor"):
        stamp, last_id = decode_cursor(cursor)
        query = query.where(or_(Sound.created_at < stamp,
                                and_(Sound.created_at == stamp, Sound.id < last_id)))
    with services().db.session() as session:
        sounds = list(session.scalars(query))
    page, has_more = sounds[:size], len(sounds) > size
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if has_more else None
    return envelope({"sounds": [sound_json(s) for s in page], "cursor": next_cursor,
                     "has_more": has_more})
