"""An operator finds a failed job in the console, retries it and sees the audit entry.

The failure is real: a worker process (allowed one attempt) finds the upload's bytes
gone and ends the job ``internal``; a second upload is not audio at all. The app's
webhook endpoint is down, so its deliveries are failing too. After the bytes are back,
the operator's retry runs through the same worker to the library.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.integration.stack import free_port, wait_for
from tests.web.live import LiveStack, chromium, fits_a_phone, live_stack, screenshot, sign_in
from tests.web.tunes import make_tune

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[LiveStack]:
    dead_hook = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    with live_stack(tmp_path_factory.mktemp("ops") / "var", sqlite_template,
                    webhook_url=dead_hook, SOUNDKIT_MAX_ATTEMPTS="1") as found:
        yield found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def test_an_operator_retries_a_failed_job_and_the_audit_log_shows_it(
        stack: LiveStack, page: Page, tmp_path: Path) -> None:
    lost, _ = stack.push(make_tune(tmp_path / "lost take.wav", 6.0, seed=51), "Lost Take")
    moved = tmp_path / "lost.bytes"
    stack.store.path(f"incoming/{lost}").rename(moved)  # the bytes vanish before a worker runs
    notes = tmp_path / "notes.mp3"
    notes.write_bytes(b"meeting notes, not music\n" * 400)
    refused, _ = stack.push(notes, "Notes")
    stack.start_worker()
    stack.wait_status(lost, "FAILED")
    stack.wait_status(refused, "FAILED")
    assert stack.upload(lost).fail_reason == "internal"

    sign_in(page, stack.url, "olga")
    page.goto(f"{stack.url}/ops")
    expect(page.get_by_role("heading", name="Operations", exact=True)).to_be_visible()
    internal = page.locator('[data-reason="internal"]')
    expect(internal).to_contain_text(lost)
    expect(internal).to_contain_text("FileNotFoundError")
    expect(internal).to_contain_text("Something went wrong on our side")
    wrong = page.locator('[data-reason="file_format_check_failed"]')
    expect(wrong.locator(f'tr[data-upload-id="{refused}"]')).to_be_visible()
    expect(wrong.get_by_role("button")).to_have_count(0)  # not retryable
    expect(page.locator("#workers tr[data-worker]").first).to_contain_text("alive",
                                                                           timeout=15_000)
    wait_for(lambda: _webhook_failing(page, stack), 30,
             "the failed-upload webhooks to fail against the dead endpoint", interval=1)

    moved.rename(stack.store.path(f"incoming/{lost}"))  # the bytes are back
    page.get_by_role("button", name=f"Retry {lost}").click()
    expect(page.get_by_role("status")).to_have_text(f"{lost} is back in the queue.")
    entry = page.locator(f'#audit tr[data-action="upload.retry"][data-target="{lost}"]')
    expect(entry).to_contain_text("olga")

    stack.wait_status(lost, "IN_LIBRARY")
    page.goto(f"{stack.url}/ops")
    expect(page.locator('#jobs tr[data-status="IN_LIBRARY"] td.num')).to_have_text("1")
    expect(page.locator("#tile-ready")).to_have_text("1")
    expect(page.locator('[data-reason="internal"]')).to_have_count(0)
    expect(page.locator("#workers tr[data-worker]").first).to_contain_text("alive",
                                                                           timeout=15_000)
    screenshot(page, "ops.png", tmp_path)


def _webhook_failing(page: Page, stack: LiveStack) -> bool:
    page.goto(f"{stack.url}/ops")
    return page.locator("#webhooks tr[data-delivery-id]").count() > 0


def test_the_console_fits_a_phone(stack: LiveStack, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    sign_in(page, stack.url, "olga")
    page.goto(f"{stack.url}/ops")
    expect(page.get_by_role("heading", name="Operations", exact=True)).to_be_visible()
    assert fits_a_phone(page)  # wide tables scroll inside their cards
    context.close()


def test_a_creator_cannot_open_the_console_and_nobody_signed_out_gets_in(
        stack: LiveStack, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    for path in ("/ops", "/library"):
        page.goto(f"{stack.url}{path}")
        expect(page).to_have_url(f"{stack.url}/login?next={path}")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.goto(f"{stack.url}/ops/api/overview").status == 401  # type: ignore[union-attr]

    sign_in(page, stack.url, "alice")
    expect(page.get_by_role("link", name="Operations")).to_have_count(0)
    response = page.goto(f"{stack.url}/ops")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="Operators only")).to_be_visible()
    assert page.goto(f"{stack.url}/metrics").status == 403  # type: ignore[union-attr]
    context.close()
