"""A creator's library: what ``/library`` shows, and the one way to delete a sound.

The library is a view over *uploads*, not only sounds, so a creator sees a track the
moment an app pushes it: still processing (with its stage), failed (with the reason
in plain words) or ready (with the sound's facts). An upload whose sound was deleted
is hidden; its row stays, because the operator console's history and the app's
``status/fetch`` still refer to it.

Deleting a sound happens in :func:`delete_sound` and nowhere else. It removes the
``Sound`` row, every stored object of it, the creator's notifications about it, and
then whatever other parts of the system keep about the sound, through *on-delete
hooks*: the fingerprint index plugs its "forget these hashes" in here (see
:func:`on_sound_delete`), so every caller (the library page, the command line,
tests) removes the hashes too without knowing the index exists.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, not_, or_, select, update
from sqlalchemy.orm import Session

from soundkit.jobs import FAIL_REASON_WORDS
from soundkit.models import (
    App,
    Notification,
    Sound,
    Stage,
    Upload,
    UploadStatus,
    User,
    utcnow,
)
from soundkit.storage import ObjectStore, StorageUnavailable

log = logging.getLogger(__name__)

PAGE_SIZE = 30

#: The stages a creator sees, in order, with the words shown for each.
PROGRESS_STAGES: tuple[Stage, ...] = (Stage.VALIDATING, Stage.TRANSCODING,
                                      Stage.FINGERPRINTING, Stage.STORING, Stage.ATTACHING)
STAGE_WORDS: dict[str, str] = {
    Stage.RECEIVING: "Receiving the file",
    Stage.QUEUED: "Waiting to be processed",
    Stage.VALIDATING: "Checking the file",
    Stage.TRANSCODING: "Converting for playback",
    Stage.FINGERPRINTING: "Checking for duplicates and protected music",
    Stage.STORING: "Saving",
    Stage.ATTACHING: "Adding to your library",
    Stage.DONE: "Done",
}


# --- Reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadySound:
    """The facts of a ready sound that the library shows."""

    sound_id: str
    title: str
    duration_ms: int
    integrated_lufs: float | None
    true_peak_dbtp: float | None
    lra: float | None
    created_at: datetime
    playback_key: str
    preview_key: str
    waveform_key: str


@dataclass(frozen=True)
class Entry:
    """One row of the library: an upload and, once it is ready, its sound."""

    upload_id: str
    status: str
    stage: str
    fail_reason: str | None
    title: str | None
    original_filename: str | None
    app_name: str
    created_at: datetime
    updated_at: datetime
    uploaded_bytes: int
    size_bytes: int | None
    sound: ReadySound | None

    @property
    def display_title(self) -> str:
        if self.sound is not None:
            return self.sound.title
        return self.title or self.original_filename or "Untitled sound"

    @property
    def is_processing(self) -> bool:
        return self.status not in (UploadStatus.IN_LIBRARY, UploadStatus.FAILED)

    @property
    def reason_words(self) -> str | None:
        """Why it failed, in the creator's words (never the operator's error detail)."""
        if self.status != UploadStatus.FAILED:
            return None
        return FAIL_REASON_WORDS.get(self.fail_reason or "",
                                     "The sound could not be added.")

    @property
    def stage_words(self) -> str:
        return STAGE_WORDS.get(self.stage, self.stage)

    @property
    def step(self) -> int:
        """How many processing stages are behind it (0 while waiting)."""
        if self.stage in PROGRESS_STAGES:
            return PROGRESS_STAGES.index(Stage(self.stage))
        return len(PROGRESS_STAGES) if self.stage == Stage.DONE else 0

    @property
    def steps(self) -> int:
        return len(PROGRESS_STAGES)

    @property
    def version(self) -> str:
        """Changes whenever what the library shows for this entry changes."""
        return f"{self.status}:{self.stage}:{self.updated_at.isoformat()}"

    def summary(self) -> dict[str, Any]:
        """The JSON the library page polls (no URLs: those are in the HTML fragment)."""
        return {
            "upload_id": self.upload_id, "status": self.status, "stage": self.stage,
            "stage_words": self.stage_words if self.is_processing else None,
            "step": self.step, "steps": self.steps,
            "fail_reason": self.fail_reason, "reason": self.reason_words,
            "sound_id": self.sound.sound_id if self.sound else None,
            "title": self.display_title, "app": self.app_name,
            "created_at": self.created_at.isoformat(), "version": self.version,
        }


def _visible() -> Any:
    """Uploads to show: everything except an IN_LIBRARY upload whose sound was deleted."""
    return not_(and_(Upload.status == UploadStatus.IN_LIBRARY, Sound.id.is_(None)))


def _entries_query(user_id: int) -> Any:
    return (select(Upload, App.name, Sound)
            .join(App, App.id == Upload.app_id)
            .outerjoin(Sound, Sound.upload_id == Upload.id)
            .where(Upload.user_id == user_id, _visible()))


def _entry(upload: Upload, app_name: str, sound: Sound | None) -> Entry:
    ready = None
    if sound is not None:
        ready = ReadySound(sound.id, sound.title, sound.duration_ms, sound.integrated_lufs,
                           sound.true_peak_dbtp, sound.lra, sound.created_at,
                           sound.playback_key, sound.preview_key, sound.waveform_key)
    return Entry(upload.id, upload.status, upload.stage, upload.fail_reason, upload.title,
                 upload.original_filename, app_name, upload.created_at, upload.updated_at,
                 upload.uploaded_bytes, upload.size_bytes, ready)


class BadCursor(ValueError):
    """A ``before`` cursor that this module did not produce."""


def encode_cursor(entry: Entry) -> str:
    raw = f"{entry.created_at.isoformat()}|{entry.upload_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, upload_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), upload_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(cursor) from None


def list_entries(session: Session, user_id: int, *, before: str | None = None,
                 limit: int = PAGE_SIZE) -> tuple[list[Entry], str | None]:
    """Newest first; returns a page and the cursor of the next (older) page, if any."""
    query = (_entries_query(user_id)
             .order_by(Upload.created_at.desc(), Upload.id.desc()).limit(limit + 1))
    if before:
        stamp, upload_id = decode_cursor(before)
        query = query.where(or_(Upload.created_at < stamp,
                                and_(Upload.created_at == stamp, Upload.id < upload_id)))
    rows = [_entry(u, name, s) for u, name, s in session.execute(query).all()]
    page = rows[:limit]
    return page, (encode_cursor(page[-1]) if len(rows) > limit else None)


def get_entries(session: Session, user_id: int, upload_ids: list[str]) -> list[Entry]:
    """The creator's entries among ``upload_ids`` (others' ids are silently left out)."""
    if not upload_ids:
        return []
    query = _entries_query(user_id).where(Upload.id.in_(upload_ids))
    return [_entry(u, name, s) for u, name, s in session.execute(query).all()]


def get_entry(session: Session, user_id: int, upload_id: str) -> Entry | None:
    found = get_entries(session, user_id, [upload_id])
    return found[0] if found else None


# --- The "new since your last visit" badge ---------------------------------------------------


def unseen_count(session: Session, user_id: int) -> int:
    """Sounds that arrived since the creator last looked at the library."""
    seen = session.scalar(select(User.library_seen_at).where(User.id == user_id))
    query = select(func.count(Sound.id)).where(Sound.owner_id == user_id)
    if seen is not None:
        query = query.where(Sound.created_at > seen)
    return int(session.scalar(query) or 0)


def mark_seen(session: Session, user_id: int, now: datetime | None = None) -> datetime | None:
    """Record a visit; returns the previous one (None on the first visit)."""
    previous = session.scalar(select(User.library_seen_at).where(User.id == user_id))
    session.execute(update(User).where(User.id == user_id)
                    .values(library_seen_at=now or utcnow())
                    .execution_options(synchronize_session=False))
    return previous


# --- Waveforms --------------------------------------------------------------------------------


WAVEFORM_BARS = 160


def bars_from_peaks(document: dict[str, Any], bars: int = WAVEFORM_BARS) \
        -> list[tuple[float, float]]:
    """Reduce a stored peaks document to ``bars`` (min, max) pairs in -1..1, for drawing.

    The stored file (``pipelines.waveform``) interleaves each window's min and max as
    integers scaled to ``bits``; each bar takes the extremes of the windows it covers,
    so a short loud transient stays visible however far the waveform is reduced.

    The bars are then scaled so that the loudest bars (the 98th percentile, ignoring a
    stray click) reach full height, as music players draw waveforms: a quietly mastered
    track would otherwise be a flat line. Quieter than ``-34 dBFS`` is not scaled up
    further, so near-silence stays flat.
    """
    peaks = document.get("peaks")
    if not isinstance(peaks, list) or len(peaks) < 2:
        return []
    scale = float(2 ** (int(document.get("bits", 8)) - 1) - 1)
    pairs = len(peaks) // 2
    count = min(bars, pairs)
    found: list[tuple[float, float]] = []
    for index in range(count):
        start = index * pairs // count
        end = max((index + 1) * pairs // count, start + 1)
        lows = peaks[2 * start:2 * end:2]
        highs = peaks[2 * start + 1:2 * end:2]
        low = max(-1.0, min(lows) / scale)
        high = min(1.0, max(highs) / scale)
        found.append((low, high))
    loudness = sorted(max(-low, high) for low, high in found)
    reference = max(loudness[min(len(loudness) - 1, int(len(loudness) * 0.98))], 0.02)
    return [(round(max(-1.0, low / reference), 3), round(min(1.0, high / reference), 3))
            for low, high in found]


class WaveformCache:
    """Reduced waveforms by object key. Objects never change under a key, so no expiry.

    Reading the peaks file is one object-store GET per sound; a library page would
    otherwise make one per ready sound on every view.
    """

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._items: OrderedDict[str, list[tuple[float, float]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, loader: Callable[[str], bytes]) -> list[tuple[float, float]]:
        """The bars for ``key``; ``loader`` reads the object's bytes on a cache miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            document = json.loads(loader(key))
        except (FileNotFoundError, ValueError, StorageUnavailable) as error:
            # Drawn without a waveform this time; not cached, so the next view retries.
            log.warning("waveform %s could not be read: %s", key, error)
            return []
        bars = bars_from_peaks(document) if isinstance(document, dict) else []
        with self._lock:
            self._items[key] = bars
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return bars


# --- Deleting a sound -------------------------------------------------------------------------


#: Called inside the deleting transaction, before the ``Sound`` row goes, with the
#: session and the sound. Raise to abort the deletion (nothing is deleted then).
SoundDeleteHook = Callable[[Session, Sound], None]

_delete_hooks: list[SoundDeleteHook] = []
_hooks_lock = threading.Lock()
_hook_modules_loaded = False

#: Modules that register on-delete hooks when imported. :func:`delete_sound` imports
#: them first, so every process (api, worker, command line) runs the same hooks
#: without having to import them at start-up. The fingerprint index adds its module
#: here; that module calls :func:`on_sound_delete` with a function that deletes the
#: sound's hashes in the same transaction.
HOOK_MODULES: tuple[str, ...] = ("soundkit.fingerprints",)


def on_sound_delete(hook: SoundDeleteHook) -> SoundDeleteHook:
    """Register ``hook`` to run whenever a sound is deleted (usable as a decorator)."""
    with _hooks_lock:
        if hook not in _delete_hooks:
            _delete_hooks.append(hook)
    return hook


def remove_sound_delete_hook(hook: SoundDeleteHook) -> None:
    with _hooks_lock:
        if hook in _delete_hooks:
            _delete_hooks.remove(hook)


def _hooks() -> list[SoundDeleteHook]:
    global _hook_modules_loaded
    if not _hook_modules_loaded:
        for module in HOOK_MODULES:
            importlib.import_module(module)
        _hook_modules_loaded = True
    with _hooks_lock:
        return list(_delete_hooks)


@dataclass(frozen=True)
class DeletedSound:
    sound_id: str
    upload_id: str
    title: str
    removed_keys: list[str]


def owned_sound(session: Session, user_id: int, sound_id: str) -> Sound | None:
    sound = session.get(Sound, sound_id)
    return sound if sound is not None and sound.owner_id == user_id else None


def delete_sound(session: Session, store: ObjectStore, sound_id: str) -> DeletedSound | None:
    """Delete a sound everywhere: hooks (fingerprint hashes), row, notifications, objects.

    Runs inside the caller's transaction and deletes the stored objects *before* the
    caller commits: if the store fails, the exception rolls the database back and the
    sound is still listed, so the creator can simply try again (deleting an object that
    is already gone is not an error). The other order could commit a deletion and then
    leave orphaned objects behind that nothing refers to any more.

    Returns None if there is no such sound (a repeated click changes nothing).
    """
    sound = session.get(Sound, sound_id, with_for_update=True)
    if sound is None:
        return None
    for hook in _hooks():
        hook(session, sound)
    keys = [key for key in dict.fromkeys(sound.object_keys) if key]
    deleted = DeletedSound(sound.id, sound.upload_id, sound.title, keys)
    session.execute(delete(Notification).where(Notification.sound_id == sound.id)
                    .execution_options(synchronize_session=False))
    session.delete(sound)
    session.flush()
    for key in keys:
        store.delete(key)
    log.info("sound %s deleted with %d objects", sound_id, len(keys))
    return deleted
