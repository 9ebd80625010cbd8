"""Ten simultaneous exchanges of one code: exactly one wins, and then loses its tokens.

The threads wait at a barrier and then POST to the token endpoint together through
their own test clients, so the compare-and-set in ``grants.claim_code`` really is
raced. On PostgreSQL the losers block on the consent row until the winner commits,
find the code spent, and revoke the winner's family; RFC 9700 asks for exactly that
(a second use of a code means it leaked).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask

from api import create_app
from soundkit.db import Database
from soundkit.settings import Settings
from tests.conftest import RecordingDispatcher, build_world
from tests.oauth.conftest import WEB_REDIRECT, Flow, add_desktop_app

THREADS = 10


def _race(app: Flask, flow: Flow, form: dict[str, str]) -> list[tuple[int, dict[str, Any]]]:
    barrier = threading.Barrier(THREADS)

    def one(_: int) -> tuple[int, dict[str, Any]]:
        client = app.test_client()
        barrier.wait()
        response = client.post("/v2/oauth/token/", data=form)
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(one, range(THREADS)))


def _flow_on(make_settings: Callable[..., Settings], dispatcher: RecordingDispatcher,
             database_url: str | None) -> tuple[Flask, Flow, Database]:
    settings = make_settings(DATABASE_URL=database_url) if database_url else make_settings()
    app = create_app(settings, dispatcher=dispatcher)
    app.config["TESTING"] = True
    db = Database(settings.database_url)
    world = build_world(db, settings)
    flow = Flow(app.test_client(), world, add_desktop_app(db, settings))
    assert flow.sign_in().status_code == 302
    return app, flow, db


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_one_code_exchanged_by_ten_threads_at_once(
        backend: str, make_settings: Callable[..., Settings], dispatcher: RecordingDispatcher,
        request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_db_url") if backend == "postgresql" else None
    app, flow, db = _flow_on(make_settings, dispatcher, url)
    try:
        code = flow.code()["code"]
        results = _race(app, flow, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": WEB_REDIRECT,
            "client_key": flow.web_key, "client_secret": flow.world.client_secret or ""})
        winners = [body for status, body in results if status == 200]
        losers = [body for status, body in results if status != 200]
        assert len(winners) == 1, results
        assert len(losers) == THREADS - 1
        assert {body["error"] for body in losers} == {"invalid_grant"}
        winner = winners[0]
        assert flow.api(winner["access_token"]).status_code == 401
        assert flow.refresh(winner["refresh_token"]).get_json()["error"] == "invalid_grant"
    finally:
        app.extensions["soundkit"].db.dispose()
        db.dispose()


@pytest.mark.integration
def test_one_refresh_token_rotated_by_ten_threads_at_once(
        make_settings: Callable[..., Settings], dispatcher: RecordingDispatcher,
        pg_db_url: str) -> None:
    app, flow, db = _flow_on(make_settings, dispatcher, pg_db_url)
    try:
        tokens = flow.tokens()
        results = _race(app, flow, {
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_key": flow.web_key, "client_secret": flow.world.client_secret or ""})
        winners = [body for status, body in results if status == 200]
        assert len(winners) == 1, results
        assert all(body["error"] == "invalid_grant" for status, body in results if status != 200)
        # Any second use of the refresh token is a replay: the family is gone.
        for body in winners:
            assert flow.api(body["access_token"]).status_code == 401
        assert flow.api(tokens["access_token"]).status_code == 401
    finally:
        app.extensions["soundkit"].db.dispose()
        db.dispose()
