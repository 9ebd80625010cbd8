"""The creator's library page: sounds arriving live, players, waveforms, deletion.

The page is rendered on the server; one small script (``static/library.js``) polls
``/library/api/uploads`` and, when an entry changes, swaps in the same server-rendered
fragment (``/library/entries/<upload_id>``), so there is one template for an entry
whether it came with the page or arrived later. Without JavaScript the page still
works; it just needs a reload to show progress.

Media URLs are the store's signed, expiring URLs (the api's ``/media/`` for the local
store, presigned S3 URLs otherwise); the page's Content-Security-Policy allows
exactly those origins for ``<audio>``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from api.envelope import envelope
from api.services import services
from api.web import CSP, add_nav_item
from api.web.signin import SignedIn, login_required, signed_in_user
from soundkit import library
from soundkit.library import BadCursor, Entry, WaveformCache
from soundkit.storage import StorageUnavailable

bp = Blueprint("library", __name__)

Page = str | tuple[str, int] | BaseResponse
MAX_POLLED_IDS = 100
WAVE_HEIGHT = 64
BAR_STEP = 3  # each bar is 2 units wide with a 1-unit gap


def init_app(app: Flask) -> None:
    app.extensions["soundkit_waveforms"] = WaveformCache()
    app.register_blueprint(bp)
    add_nav_item(app, "Library", "library.index", first=True, badge=_unseen_badge)


def _unseen_badge(user: SignedIn) -> int:
    with services().db.session() as session:
        return library.unseen_count(session, user.id)


# --- Presenting an entry -------------------------------------------------------------------


@dataclass(frozen=True)
class Waveform:
    """An SVG drawing of the peaks: one path of vertical bars in a fixed viewBox."""

    width: int
    height: int
    path: str


def waveform_svg(bars: list[tuple[float, float]]) -> Waveform | None:
    if not bars:
        return None
    middle, reach = WAVE_HEIGHT / 2, WAVE_HEIGHT / 2 - 2
    parts = []
    for index, (low, high) in enumerate(bars):
        x = index * BAR_STEP + 1
        top, bottom = middle - high * reach, middle - low * reach
        if bottom - top < 1:  # silence still draws a hairline
            top, bottom = middle - 0.5, middle + 0.5
        parts.append(f"M{x} {top:.1f}V{bottom:.1f}")
    return Waveform(len(bars) * BAR_STEP, WAVE_HEIGHT, "".join(parts))


def _read_object(key: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="soundkit-wave-") as folder:
        target = Path(folder) / "object"
        services().store.download(key, target)
        return target.read_bytes()


def duration_text(ms: int) -> str:
    seconds = round(ms / 1000)
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass(frozen=True)
class EntryView:
    """An entry with what the template needs: signed URLs, the waveform, words."""

    entry: Entry
    is_new: bool
    playback_url: str | None = None
    preview_url: str | None = None
    waveform: Waveform | None = None

    @property
    def duration(self) -> str | None:
        return duration_text(self.entry.sound.duration_ms) if self.entry.sound else None

    @property
    def created_ms(self) -> int:
        return int(self.entry.created_at.timestamp() * 1000)


def present(entry: Entry, *, is_new: bool = False) -> EntryView:
    sound = entry.sound
    if sound is None:
        return EntryView(entry, is_new)
    svc = services()
    ttl = svc.settings.url_ttl_s
    cache: WaveformCache = current_app.extensions["soundkit_waveforms"]
    return EntryView(
        entry, is_new,
        playback_url=svc.store.signed_url(sound.playback_key, ttl, "audio/mp4"),
        preview_url=svc.store.signed_url(sound.preview_key, ttl, "audio/mp4"),
        waveform=waveform_svg(cache.get(sound.waveform_key, _read_object)))


def _media_csp() -> str:
    """The pages' policy, plus the origins our signed media URLs point at."""
    svc = services()
    origins = {"'self'"}
    for url in (svc.settings.public_url, svc.store.signed_url("csp/probe", 60)):
        parts = urlsplit(url)
        if parts.scheme in {"http", "https"} and parts.netloc:
            origins.add(f"{parts.scheme}://{parts.netloc}")
    return f"{CSP}; media-src {' '.join(sorted(origins))}"


@bp.after_request
def _allow_media(response: Response) -> Response:
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = _media_csp()
    return response


# --- Pages --------------------------------------------------------------------------------------


@bp.get("/library")
@login_required
def index() -> Page:
    """Every upload an app pushed for this creator, newest first; marks the visit."""
    user = signed_in_user()
    before = request.args.get("before") or None
    with services().db.session() as session:
        try:
            entries, older = library.list_entries(session, user.id, before=before)
        except BadCursor:
            return render_template("error.html", title="That page does not exist",
                                   message="The link to older sounds is not valid. Go back to "
                                           "your library and try again."), 400
        unseen = library.unseen_count(session, user.id)
        previous_visit = library.mark_seen(session, user.id)

    def is_new(entry: Entry) -> bool:
        return entry.sound is not None and (previous_visit is None
                                            or entry.sound.created_at > previous_visit)

    views = [present(e, is_new=is_new(e)) for e in entries]
    return render_template("library/index.html", views=views, older=older,
                           first_page=before is None, unseen=unseen,
                           poll_url=url_for("library.poll"))


@bp.get("/library/entries/<upload_id>")
@login_required
def entry_fragment(upload_id: str) -> Page:
    """One entry as HTML, for the page's script to swap in when the entry changes."""
    user = signed_in_user()
    with services().db.session() as session:
        entry = library.get_entry(session, user.id, upload_id[:40])
    if entry is None:
        abort(404)
    view = present(entry, is_new=request.args.get("fresh") == "1" and entry.sound is not None)
    return render_template("library/_entry.html", view=view)


@bp.get("/library/api/uploads")
@login_required
def poll() -> Response:
    """The newest page of entries plus any asked for by id, as small JSON summaries.

    Polling is what an open, visible library page does; a sound that arrives while
    it is open counts as seen, so it does not show up as new on the next visit.
    """
    user = signed_in_user()
    wanted = [i for i in request.args.get("ids", "").split(",") if i][:MAX_POLLED_IDS]
    with services().db.session() as session:
        newest, _ = library.list_entries(session, user.id)
        asked = library.get_entries(session, user.id, wanted)
        unseen = library.unseen_count(session, user.id)
        if unseen:
            library.mark_seen(session, user.id)
    found = {e.upload_id: e for e in [*newest, *asked]}
    ordered = sorted(found.values(), key=lambda e: (e.created_at, e.upload_id), reverse=True)
    return envelope({"uploads": [e.summary() for e in ordered],
                     "newest": [e.upload_id for e in newest],
                     "missing": [i for i in wanted if i not in found]})


@bp.route("/library/sounds/<sound_id>/delete", methods=["GET", "POST"])
@login_required
def delete(sound_id: str) -> Page:
    """GET asks for confirmation; the POST (with its CSRF token) deletes everything."""
    user, svc = signed_in_user(), services()
    if request.method == "GET":
        with svc.db.session() as session:
            sound = library.owned_sound(session, user.id, sound_id[:40])
            if sound is None:
                abort(404)
            context: dict[str, Any] = {"sound_id": sound.id, "title": sound.title,
                                       "app_name": sound.app.name,
                                       "duration": duration_text(sound.duration_ms)}
        return render_template("library/delete.html", **context)
    try:
        with svc.db.session() as session:
            if library.owned_sound(session, user.id, sound_id[:40]) is None:
                abort(404)
            deleted = library.delete_sound(session, svc.store, sound_id[:40])
    except StorageUnavailable:
        flash("The sound could not be deleted right now. Please try again in a moment.",
              "error")
        return redirect(url_for("library.index"))
    if deleted is not None:
        flash(f"“{deleted.title}” was deleted.", "success")
    return redirect(url_for("library.index"))

