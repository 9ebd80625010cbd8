"""The creator's library through the Flask test client: pages, the poll, deletion.

Sounds are pushed through the real upload endpoint and ingested by the worker's own
code with real ffmpeg, so the page shows real durations, loudness and waveforms.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select, update

from soundkit import jobs, library
from soundkit.db import Database
from soundkit.models import Notification, Sound, Stage, Upload, utcnow
from soundkit.settings import Settings
from soundkit.storage import LocalStore
from tests.integration.stack import ROOT
from tests.web.conftest import (
    People,
    csrf_token,
    push,
    run_worker,
    session_csrf,
)
from tests.web.tunes import make_tune


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp3"
    path.write_bytes(b"these are not the sounds you are looking for\n" * 200)
    return path


def ready_sound(people: People, settings: Settings, path: Path, title: str) -> str:
    upload_id = push(people.app, people.world.token(), path, title)
    assert run_worker(people.app, settings, upload_id) == "done"
    return upload_id


def entry_html(page: str, upload_id: str) -> str:
    found = re.search(rf'<li class="card entry[^"]*" id="entry-{upload_id}".*?</li>', page,
                      re.S)
    assert found, f"{upload_id} is not on the page"
    return found.group(0)


def test_signed_out_browsers_are_sent_to_sign_in(people: People) -> None:
    client = people.browser()
    for path in ("/library", "/library/api/uploads", "/library/entries/upl_x",
                 "/library/sounds/snd_x/delete"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login?next="), path


def test_an_empty_library_says_what_will_appear(people: People) -> None:
    page = people.creator().get("/library")
    assert page.status_code == 200
    assert 'id="library-empty">' in page.text  # shown, not hidden
    assert "No sounds yet" in page.text
    assert "<script src=\"/static/library.js\" defer></script>" in page.text


def test_each_state_is_shown_newest_first(people: People, settings: Settings, track: Path,
                                          bad_file: Path, store: LocalStore) -> None:
    ready = ready_sound(people, settings, track, "Night Drive")
    failed = push(people.app, people.world.token(), bad_file, "Just Notes")
    assert run_worker(people.app, settings, failed) == "done"  # ended FAILED at validation
    waiting = push(people.app, people.world.token(),
                   make_tune(track.with_name("waiting.wav"), 5.5, seed=21), "Still Cooking")

    page = people.creator().get("/library").text
    order = re.findall(r'data-upload-id="(upl_[0-9a-f]+)"', page)
    assert order == [waiting, failed, ready]
    assert 'id="library-empty" hidden' in page

    processing = entry_html(page, waiting)
    assert "Still Cooking" in processing and "Processing" in processing
    assert "Waiting to be processed" in processing
    assert '<progress max="5" value="0"' in processing

    refused = entry_html(page, failed)
    assert "Not added" in refused
    assert jobs.FAIL_REASON_WORDS["file_format_check_failed"] in refused
    assert "ffprobe" not in refused  # the operator's detail is not the creator's business

    card = entry_html(page, ready)
    assert "Night Drive" in card and "Beat Lab" in card and "Ready" in card
    assert '<dd class="entry-duration">0:06</dd>' in card
    lufs = re.search(r'<dd class="entry-loudness">(-?\d+\.\d) LUFS</dd>', card)
    assert lufs and -40 < float(lufs.group(1)) < 0
    path = re.search(r'<path class="wave-base" d="([^"]+)"/>', card)
    assert path and path.group(1).count("M") == library.WAVEFORM_BARS
    with people.world.db.session() as session:
        sound = session.scalars(select(Sound).where(Sound.upload_id == ready)).one()
    playback = re.search(r'<audio class="player-audio" controls preload="metadata" src="([^"]+)"',
                         card)
    assert playback and f"/media/{sound.playback_key}?" in playback.group(1).replace("&amp;", "&")
    assert f"/media/{sound.preview_key}?" in card
    assert f'href="/library/sounds/{sound.id}/delete"' in card

    # The page's media URL streams with Range support, so the player can seek.
    url = playback.group(1).replace("&amp;", "&").removeprefix(settings.public_url)
    ranged = people.browser().get(url, headers={"Range": "bytes=1000-1999"})
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"].startswith("bytes 1000-1999/")
    assert len(ranged.data) == 1000


def test_the_page_allows_only_our_media_origins(people: People) -> None:
    page = people.creator().get("/library")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "media-src 'self' http://127.0.0.1:8000" in policy


def test_the_poll_reports_stages_and_the_fragment_follows(people: People, settings: Settings,
                                                          track: Path, db: Database) -> None:
    upload_id = push(people.app, people.world.token(), track, "Night Drive")
    browser = people.creator()
    first = browser.get("/library/api/uploads").get_json()["data"]
    assert first["newest"] == [upload_id]
    [summary] = first["uploads"]
    assert summary["status"] == "PROCESSING" and summary["stage"] == "queued"
    assert summary["stage_words"] == "Waiting to be processed"
    assert summary["title"] == "Night Drive" and summary["app"] == "Beat Lab"

    with db.session() as session:  # a worker takes the job and starts converting
        claim = jobs.claim(session, upload_id, "test-worker", 60)
        assert claim is not None
        assert jobs.renew(session, claim, Stage.TRANSCODING, 60)
    later = browser.get(f"/library/api/uploads?ids={upload_id},upl_nothere").get_json()["data"]
    [moved] = later["uploads"]
    assert moved["stage"] == "transcoding" and moved["step"] == 1
    assert moved["stage_words"] == "Converting for playback"
    assert moved["version"] != summary["version"]
    assert later["missing"] == ["upl_nothere"]

    fragment = browser.get(f"/library/entries/{upload_id}")
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith("<li")
    assert "Converting for playback" in fragment.text and "step 2 of 5" in fragment.text
    assert "<html" not in fragment.text


def test_a_creator_sees_nothing_of_another_creator(people: People, settings: Settings,
                                                   track: Path) -> None:
    upload_id = ready_sound(people, settings, track, "Night Drive")
    with people.world.db.session() as session:
        sound_id = session.scalars(select(Sound.id)).one()
    bob = people.browser(people.other)
    assert upload_id not in bob.get("/library").text
    poll = bob.get(f"/library/api/uploads?ids={upload_id}").get_json()["data"]
    assert poll["uploads"] == [] and poll["missing"] == [upload_id]
    assert bob.get(f"/library/entries/{upload_id}").status_code == 404
    page = bob.get(f"/library/sounds/{sound_id}/delete")
    assert page.status_code == 404
    token = session_csrf(bob)
    assert bob.post(f"/library/sounds/{sound_id}/delete",
                    data={"csrf_token": token}).status_code == 404
    with people.world.db.session() as session:
        assert session.get(Sound, sound_id) is not None


def test_the_badge_counts_sounds_that_arrived_since_the_last_visit(
        people: People, settings: Settings, track: Path, db: Database) -> None:
    browser = people.creator()
    browser.get("/library")  # a visit
    assert 'class="nav-badge"' not in browser.get("/settings/apps").text

    ready_sound(people, settings, track, "Night Drive")
    apps_page = browser.get("/settings/apps").text
    badge = re.search(r'<a href="/library"[^>]*>Library\s*<span class="nav-badge">(\d+)', apps_page)
    assert badge and badge.group(1) == "1"

    library_page = browser.get("/library").text
    assert "1 new sound since your last visit." in library_page
    assert '<span class="pill pill-new">New</span>' in library_page
    assert 'class="nav-badge"' not in browser.get("/settings/apps").text
    assert '<span class="pill pill-new">' not in browser.get("/library").text

    # A sound that arrives while the page is open (and polling) counts as seen.
    ready_sound(people, settings, make_tune(track.with_name("second.wav"), 5.5, seed=22),
                "Second")
    assert browser.get("/library/api/uploads").status_code == 200
    with db.session() as session:
        assert library.unseen_count(session, people.world.creator.id) == 0


def test_deleting_removes_the_sound_its_objects_and_the_apps_view(
        people: People, settings: Settings, track: Path, store: LocalStore,
        db: Database) -> None:
    upload_id = ready_sound(people, settings, track, "Night Drive")
    with db.session() as session:
        sound = session.scalars(select(Sound)).one()
    keys = sound.object_keys
    assert all(store.exists(key) for key in keys)
    assert store.list_keys(f"sounds/{sound.id}/")
    token = people.world.token()
    listed = people.app.test_client().get("/v2/sound/list/",
                                          headers={"Authorization": f"Bearer {token}"})
    assert [s["sound_id"] for s in listed.get_json()["data"]["sounds"]] == [sound.id]

    forgotten: list[str] = []

    def fingerprint_index(session: object, doomed: Sound) -> None:
        forgotten.append(doomed.id)

    library.on_sound_delete(fingerprint_index)
    try:
        browser = people.creator()
        confirm = browser.get(f"/library/sounds/{sound.id}/delete")
        assert confirm.status_code == 200
        assert "Delete “Night Drive”?" in confirm.text and "cannot be undone" in confirm.text

        refused = browser.post(f"/library/sounds/{sound.id}/delete")  # no CSRF token
        assert refused.status_code == 400
        assert all(store.exists(key) for key in keys)

        done = browser.post(f"/library/sounds/{sound.id}/delete",
                            data={"csrf_token": csrf_token(confirm.text)})
        assert done.status_code == 302 and done.headers["Location"] == "/library"
        assert "“Night Drive” was deleted." in browser.get("/library").text
    finally:
        library.remove_sound_delete_hook(fingerprint_index)

    assert forgotten == [sound.id]
    assert not any(store.exists(key) for key in keys)
    assert store.list_keys(f"sounds/{sound.id}/") == []
    assert store.list_keys("incoming/") == []
    with db.session() as session:
        assert session.get(Sound, sound.id) is None
        assert session.scalars(select(Notification).where(
            Notification.sound_id == sound.id)).all() == []
        assert session.get(Upload, upload_id) is not None  # the job's history stays
    assert upload_id not in browser.get("/library").text
    assert browser.get(f"/library/entries/{upload_id}").status_code == 404
    listed = people.app.test_client().get("/v2/sound/list/",
                                          headers={"Authorization": f"Bearer {token}"})
    assert listed.get_json()["data"]["sounds"] == []
    again = browser.post(f"/library/sounds/{sound.id}/delete",
                         data={"csrf_token": csrf_token(confirm.text)})
    assert again.status_code == 404


def test_a_failing_hook_deletes_nothing(people: People, settings: Settings, track: Path,
                                        store: LocalStore, db: Database) -> None:
    ready_sound(people, settings, track, "Night Drive")
    with db.session() as session:
        sound = session.scalars(select(Sound)).one()

    def broken_index(session: object, doomed: Sound) -> None:
        raise RuntimeError("index unavailable")

    library.on_sound_delete(broken_index)
    try:
        with pytest.raises(RuntimeError), db.session() as session:
            library.delete_sound(session, store, sound.id)
    finally:
        library.remove_sound_delete_hook(broken_index)
    assert all(store.exists(key) for key in sound.object_keys)
    with db.session() as session:
        assert session.get(Sound, sound.id) is not None


def test_pages_of_older_entries(people: People, db: Database, app: Flask) -> None:
    now = utcnow()
    with db.session() as session:
        for index in range(5):
            session.add(Upload(id=f"upl_{index:04d}", app_id=1, user_id=people.world.creator.id,
                               title=f"Take {index}", created_at=now - timedelta(minutes=index)))
    with db.session() as session:
        first, cursor = library.list_entries(session, people.world.creator.id, limit=2)
        assert [e.upload_id for e in first] == ["upl_0000", "upl_0001"]
        assert cursor is not None
        second, cursor = library.list_entries(session, people.world.creator.id, before=cursor,
                                              limit=2)
        assert [e.upload_id for e in second] == ["upl_0002", "upl_0003"]
        last, cursor = library.list_entries(session, people.world.creator.id, before=cursor,
                                            limit=2)
        assert [e.upload_id for e in last] == ["upl_0004"] and cursor is None
    browser = people.creator()
    assert browser.get("/library?before=not-a-cursor").status_code == 400


def test_waveform_bars_keep_each_windows_extremes() -> None:
    document = {"bits": 8, "peaks": [-10, 20, -127, 5, 0, 0, -3, 127]}
    assert library.bars_from_peaks(document, bars=2) == [(-1.0, 0.157), (-0.024, 1.0)]
    assert library.bars_from_peaks(document, bars=10) == [
        (-0.079, 0.157), (-1.0, 0.039), (0.0, 0.0), (-0.024, 1.0)]
    assert library.bars_from_peaks({"peaks": []}) == []


def test_quiet_waveforms_are_drawn_to_full_height_without_a_stray_click() -> None:
    quiet = [-6, 6] * 98 + [-127, 127] + [-3, 3]  # 100 windows at 5 %, one full-scale click
    bars = library.bars_from_peaks({"bits": 8, "peaks": quiet}, bars=100)
    assert bars[0] == (-1.0, 1.0) and bars[98] == (-1.0, 1.0) and bars[99] == (-0.5, 0.5)
    silence = library.bars_from_peaks({"bits": 8, "peaks": [0, 1] * 50}, bars=10)
    assert all(high <= 0.4 for _, high in silence)  # near-silence is not blown up


def test_the_stored_waveform_is_read_once(people: People, settings: Settings, track: Path,
                                          db: Database, store: LocalStore) -> None:
    ready_sound(people, settings, track, "Night Drive")
    with db.session() as session:
        sound = session.scalars(select(Sound)).one()
    stored = json.loads(store.path(sound.waveform_key).read_text())
    assert stored["peaks"]
    browser = people.creator()
    first = browser.get("/library").text
    store.delete(sound.waveform_key)  # cached: the next page still draws it
    assert re.search(r'<path class="wave-base" d="([^"]+)"/>', first).group(1) in \
        browser.get("/library").text
    with db.session() as session:
        session.execute(update(Sound).values(waveform_key=f"sounds/{sound.id}/missing.json"))
    assert '<svg class="waveform"' not in browser.get("/library").text  # drawn without it


def test_every_process_runs_the_fingerprint_hook_without_importing_it_first() -> None:
    """The api never imports the fingerprint index; deleting a sound must still forget it."""
    code = ("import sys, api, soundkit.library as library\n"
            "assert 'soundkit.fingerprints' not in sys.modules\n"
            "print(sorted(f'{h.__module__}.{h.__name__}' for h in library._hooks()))")
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert "soundkit.fingerprints." in found.stdout


def test_deleting_in_the_library_removes_the_fingerprint_rows(
        people: People, settings: Settings, track: Path, db: Database) -> None:
    from soundkit.fingerprints import SqlIndex
    from soundkit.models import FingerprintTrack
    from worker import fingerprinting, ingest

    previous = ingest._policy_factory
    ingest.set_policy_factory(fingerprinting.policy_factory)  # what worker.app installs
    try:
        upload_id = ready_sound(people, settings, track, "Night Drive")
    finally:
        ingest.set_policy_factory(previous)

    def rows(track_id: int) -> int:
        with db.session() as session:
            return SqlIndex(session).posting_count(track_id)

    with db.session() as session:
        sound_id = session.scalars(select(Sound.id).where(Sound.upload_id == upload_id)).one()
        indexed = session.scalars(select(FingerprintTrack.id).where(
            FingerprintTrack.sound_id == sound_id)).one()
    assert rows(indexed) > 100
    browser = people.creator()
    done = browser.post(f"/library/sounds/{sound_id}/delete",
                        data={"csrf_token": session_csrf(browser)})
    assert done.status_code == 302
    with db.session() as session:
        assert session.get(FingerprintTrack, indexed) is None
    assert rows(indexed) == 0
