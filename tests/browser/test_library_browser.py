"""A creator watches a pushed track arrive, plays it and deletes it, in Chromium.

Everything is real: the api over HTTP, a Celery worker process with ffmpeg, the
filesystem broker, SQLite and the local store whose ``/media/`` URLs the api serves
with HTTP Range. The page is never reloaded while the track goes from waiting to ready.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, Response, expect

from soundkit.models import Sound
from tests.integration.stack import wait_for
from tests.web.live import LiveStack, chromium, fits_a_phone, live_stack, screenshot, sign_in
from tests.web.tunes import make_tune

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[LiveStack]:
    with live_stack(tmp_path_factory.mktemp("library") / "var", sqlite_template) as found:
        yield found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    yield context.new_page()
    context.close()


def test_a_pushed_track_arrives_live_plays_and_is_deleted(
        stack: LiveStack, page: Page, tmp_path: Path) -> None:
    track = make_tune(tmp_path / "night drive.mp3", 8.0, seed=41)
    sign_in(page, stack.url, "alice")
    expect(page).to_have_url(f"{stack.url}/library")
    expect(page.locator("#library-empty")).to_be_visible()
    page.evaluate("window.soundkitTestNoReload = true")

    # An app pushes a track; no worker runs yet, so it waits in the queue.
    upload_id, _ = stack.push(track, "Night Drive")
    card = page.locator(f"#entry-{upload_id}")
    expect(card).to_be_visible(timeout=20_000)
    expect(card.locator(".pill-processing")).to_have_text("Processing")
    expect(card.locator(".entry-stage")).to_contain_text("Waiting to be processed")
    expect(page.locator("#library-live")).to_have_text(
        "Night Drive arrived from Beat Lab and is being processed.")
    expect(page.locator("#library-empty")).to_be_hidden()

    # Another app push is not audio at all.
    notes = tmp_path / "voice memo.mp3"
    notes.write_bytes(b"a text file with an mp3 name\n" * 300)
    refused_id, _ = stack.push(notes, "Voice memo")
    refused = page.locator(f"#entry-{refused_id}")
    expect(refused).to_be_visible(timeout=20_000)

    # A worker starts: the entries change in place, still without a reload.
    stack.start_worker()
    expect(refused.locator(".pill-failed")).to_have_text("Not added", timeout=60_000)
    expect(refused.locator(".entry-reason")).to_have_text(
        "The file is not a supported audio format.")
    expect(refused.locator(".pill-new")).to_have_count(0)  # "new" is for sounds that arrived
    expect(card.locator(".pill-ready")).to_be_visible(timeout=60_000)
    assert page.evaluate("window.soundkitTestNoReload") is True
    assert [e.get_attribute("data-upload-id") for e in
            page.locator("#entries > li.entry").element_handles()] == [refused_id, upload_id]
    expect(card.locator(".entry-title")).to_have_text("Night Drive")
    expect(card.locator(".entry-app")).to_have_text("Beat Lab")
    expect(card.locator(".entry-duration")).to_have_text("0:08")
    expect(card.locator(".entry-loudness")).to_have_text(re.compile(r"^-\d+\.\d LUFS$"))
    expect(card.locator(".pill-new")).to_be_visible()
    bars = card.locator("svg.waveform path.wave-base").get_attribute("d") or ""
    assert bars.count("M") == 160
    screenshot(page, "library.png", tmp_path)

    # Play: clicking the waveform seeks to the middle, then the player plays from there.
    media: list[Response] = []
    page.on("response", lambda r: media.append(r) if "/media/" in r.url else None)
    audio = card.locator("audio.player-audio")
    wave = card.locator("svg.waveform").bounding_box()
    assert wave is not None
    page.mouse.click(wave["x"] + wave["width"] * 0.5, wave["y"] + wave["height"] / 2)
    page.wait_for_function("a => a.readyState >= 1 && a.currentTime > 3.5",
                           arg=audio.element_handle(), timeout=15_000)
    assert audio.evaluate("a => a.play().then(() => 'playing')") == "playing"
    page.wait_for_function("a => a.currentTime > 4.8 && !a.paused",
                           arg=audio.element_handle(), timeout=15_000)
    played = float(card.locator(".wave-played-rect").get_attribute("width") or 0)
    assert played > 160 * 3 * 0.5  # the waveform shows how far it has played
    audio.evaluate("a => a.pause()")
    with stack.db.session() as session:
        sound = session.query(Sound).filter_by(upload_id=upload_id).one()
    playback = [r for r in media if sound.playback_key in r.url]
    assert playback and all(r.status in (200, 206) for r in playback)
    assert any(r.status == 206 for r in playback)  # served in ranges: seeking works

    # The preview clip loads too.
    card.locator("details.preview summary").click()
    preview = card.locator("audio.preview-audio")
    expect(preview).to_be_visible()
    preview.evaluate("a => a.load()")
    page.wait_for_function("a => a.readyState >= 1 && a.duration > 0",
                           arg=preview.element_handle(), timeout=15_000)
    assert 0 < preview.evaluate("a => a.duration") <= 30.5

    # Delete, by keyboard, through the confirmation page.
    card.get_by_role("link", name="Delete Night Drive").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Delete “Night Drive”?")).to_be_visible()
    page.get_by_role("button", name="Delete sound").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_text("“Night Drive” was deleted.")).to_be_visible()
    expect(page.locator(f"#entry-{upload_id}")).to_have_count(0)

    for key in sound.object_keys:
        assert not stack.store.exists(key), key
    assert stack.store.list_keys(f"sounds/{sound.id}/") == []
    listed = requests.get(f"{stack.url}/v2/sound/list/", timeout=10,
                          headers={"Authorization": f"Bearer {stack.world.token()}"})
    assert listed.json()["data"]["sounds"] == []


def test_the_library_fits_a_phone(stack: LiveStack, browser: Browser, tmp_path: Path) -> None:
    stack.start_worker()
    upload_id, _ = stack.push(make_tune(tmp_path / "pocket.wav", 6.0, seed=42),
                              "A rather long title for a sound recorded on a phone at night")
    stack.wait_status(upload_id, "IN_LIBRARY")
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    sign_in(page, stack.url, "alice")
    expect(page.locator(f"#entry-{upload_id} .pill-ready")).to_be_visible()
    assert fits_a_phone(page)
    context.close()


def test_the_request_log_id_is_on_every_worker_log_line_of_the_job(
        stack: LiveStack, tmp_path: Path) -> None:
    worker = stack.start_worker()
    upload_id, log_id = stack.push(make_tune(tmp_path / "logged.flac", 5.5, seed=43),
                                   "Logged")
    stack.wait_status(upload_id, "IN_LIBRARY")
    lines = json_lines(worker.output())
    of_job = [line for line in lines if line.get("upload_id") == upload_id]
    assert {line["log_id"] for line in of_job} == {log_id}
    stages = {line.get("stage") for line in of_job if line.get("stage")}
    assert stages == {"validating", "transcoding", "fingerprinting", "storing", "attaching"}
    assert all(line["process"] == "worker" for line in of_job)

    def celery_lines_of_the_task() -> list[dict[str, Any]]:
        """Celery's own "received" and "succeeded" lines, which name only the task id."""
        return [line for line in json_lines(worker.output())
                if line["name"].startswith("celery") and f"[{log_id}." in line["message"]]

    wait_for(lambda: any("succeeded" in line["message"] for line in celery_lines_of_the_task()),
             20, "Celery's succeeded line")
    of_task = celery_lines_of_the_task()
    assert any("received" in line["message"] for line in of_task)
    assert {line["log_id"] for line in of_task} == {log_id}


def json_lines(output: str) -> list[dict[str, Any]]:
    """The worker's log lines: not a terminal, so every line of ours is a JSON object."""
    return [json.loads(raw) for raw in output.splitlines() if raw.startswith("{")]
