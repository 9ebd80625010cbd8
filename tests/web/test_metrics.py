"""``/metrics``: names and labels pinned, values equal to the database, gunicorn-safe.

Dashboards and alerts are written against these names; renaming one silently breaks
them, so the first test pins every metric's name, type and label set.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from api.metrics import StageHistogram
from soundkit import migrate
from soundkit.db import Database
from soundkit.models import StageRun, Upload, utcnow
from soundkit.queue import Dispatcher, make_celery
from soundkit.settings import Settings
from tests.conftest import SECRET
from tests.integration.stack import ROOT, free_port, wait_for
from tests.web.conftest import Console, People, run_worker

OPS_TOKEN = "metrics-token-for-tests-0123456789abcdef"

#: name (as the parser reports it) → (type, label names).
PINNED: dict[str, tuple[str, set[str]]] = {
    "soundkit_uploads": ("gauge", {"status", "fail_reason"}),
    "soundkit_processing_uploads": ("gauge", {"stage"}),
    "soundkit_stalled_uploads": ("gauge", set()),
    "soundkit_oldest_waiting_job_age_seconds": ("gauge", set()),
    "soundkit_stage_duration_seconds": ("histogram", {"stage", "outcome"}),
    "soundkit_webhook_deliveries": ("gauge", {"status"}),
    "soundkit_webhook_backlog": ("gauge", set()),
    "soundkit_webhook_failing": ("gauge", set()),
    "soundkit_webhook_oldest_pending_age_seconds": ("gauge", set()),
    "soundkit_broker_up": ("gauge", set()),
    "soundkit_queue_depth": ("gauge", {"queue"}),
    "soundkit_http_requests": ("counter", {"method", "endpoint", "status"}),
    "soundkit_http_request_duration_seconds": ("histogram", {"method", "endpoint"}),
}


def scrape(client: FlaskClient | None = None, *, text: str | None = None) \
        -> dict[str, Any]:
    if text is None:
        assert client is not None
        response = client.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.content_type.startswith("text/plain; version=0.0.4")
        text = response.text
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, sample: str | None = None,
          **labels: str) -> float:
    matches = [s.value for s in families[name].samples
               if s.name == (sample or name) and s.labels == labels]
    assert len(matches) == 1, (name, labels, families[name].samples)
    return float(matches[0])


def test_metric_names_types_and_labels_are_pinned(people: People, console: Console) -> None:
    families = scrape(people.ops())
    found = {name: (f.type, {k for s in f.samples for k in s.labels} - {"le"})
             for name, f in families.items() if name.startswith("soundkit_")}
    assert found == PINNED


def test_values_are_the_databases(people: People, console: Console, db: Database,
                                  settings: Settings) -> None:
    operator = people.ops()
    families = scrape(operator)
    with db.session() as session:
        by_status = dict(session.execute(
            select(Upload.status, func.count()).group_by(Upload.status)).all())
        runs = dict(session.execute(
            select(StageRun.stage, func.count()).where(StageRun.outcome == "ok")
            .group_by(StageRun.stage)).all())
    assert value(families, "soundkit_uploads", status="IN_LIBRARY", fail_reason="") \
        == by_status["IN_LIBRARY"] == 1
    assert value(families, "soundkit_uploads", status="FAILED",
                 fail_reason="file_format_check_failed") == 2
    assert value(families, "soundkit_uploads", status="FAILED", fail_reason="internal") == 1
    assert value(families, "soundkit_uploads", status="FAILED",
                 fail_reason="copyright_match") == 0  # every reason is exported
    assert value(families, "soundkit_processing_uploads", stage="queued") == 2
    assert value(families, "soundkit_processing_uploads", stage="transcoding") == 0
    assert value(families, "soundkit_stalled_uploads") == 1
    assert value(families, "soundkit_oldest_waiting_job_age_seconds") > 0
    assert value(families, "soundkit_webhook_backlog") == 1
    assert value(families, "soundkit_webhook_failing") == 1
    assert value(families, "soundkit_webhook_deliveries", status="delivered") == 0
    assert value(families, "soundkit_broker_up") == 1
    assert value(families, "soundkit_queue_depth", queue="ingest") == 0
    for stage, count in runs.items():
        assert value(families, "soundkit_stage_duration_seconds",
                     "soundkit_stage_duration_seconds_count", stage=stage, outcome="ok") == count
        assert value(families, "soundkit_stage_duration_seconds",
                     "soundkit_stage_duration_seconds_bucket", stage=stage, outcome="ok",
                     le="+Inf") == count
    assert value(families, "soundkit_stage_duration_seconds",
                 "soundkit_stage_duration_seconds_count", stage="validating",
                 outcome="rejected") == 2

    # The next scrape counts only what happened since, and the broker's files are real.
    assert run_worker(people.app, settings, console.waiting) == "done"
    assert Dispatcher(make_celery(settings)).wake_upload("upl_nothing")
    again = scrape(operator)
    assert value(again, "soundkit_stage_duration_seconds",
                 "soundkit_stage_duration_seconds_count", stage="transcoding",
                 outcome="ok") == runs["transcoding"] + 1
    assert value(again, "soundkit_uploads", status="IN_LIBRARY", fail_reason="") == 2
    assert value(again, "soundkit_queue_depth", queue="ingest") == 1


def test_http_requests_are_counted_by_endpoint(people: People) -> None:
    client = people.ops()
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert client.get("/no/such/page").status_code == 404
    families = scrape(client)
    assert value(families, "soundkit_http_requests", "soundkit_http_requests_total",
                 method="GET", endpoint="healthz", status="200") == 3
    assert value(families, "soundkit_http_requests", "soundkit_http_requests_total",
                 method="GET", endpoint="unmatched", status="404") == 1
    assert value(families, "soundkit_http_request_duration_seconds",
                 "soundkit_http_request_duration_seconds_count",
                 method="GET", endpoint="healthz") == 3


def test_redis_queues_and_an_unreachable_broker(make_settings: Callable[..., Settings],
                                                redis_url: str, people: People) -> None:
    from api import create_app
    from tests.conftest import RecordingDispatcher

    settings = make_settings(BROKER_URL=redis_url, SOUNDKIT_OPS_TOKEN=OPS_TOKEN)
    Dispatcher(make_celery(settings)).wake_webhook(5)
    client = create_app(settings, dispatcher=RecordingDispatcher()).test_client()
    headers = {"Authorization": f"Bearer {OPS_TOKEN}"}
    families = scrape(text=client.get("/metrics", headers=headers).text)
    assert value(families, "soundkit_queue_depth", queue="webhooks") == 1
    assert value(families, "soundkit_queue_unacked") == 0

    down = make_settings(BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
                         SOUNDKIT_OPS_TOKEN=OPS_TOKEN)
    client = create_app(down, dispatcher=RecordingDispatcher()).test_client()
    families = scrape(text=client.get("/metrics", headers=headers).text)
    assert value(families, "soundkit_broker_up") == 0
    assert "soundkit_queue_depth" not in families


def test_stage_runs_committed_out_of_order_are_counted_once(db: Database, people: People) -> None:
    histogram = StageHistogram(buckets=(1.0, 10.0))
    start = utcnow()

    def run(run_id: int, seconds: float) -> StageRun:
        return StageRun(id=run_id, upload_id="upl_x", stage="transcoding", attempt=1,
                        started_at=start, finished_at=start + timedelta(seconds=seconds),
                        outcome="ok")

    with db.session() as session:
        session.add(Upload(id="upl_x", app_id=1, user_id=people.world.creator.id))
        session.flush()
        session.add_all([run(1, 0.5), run(3, 5.0)])
    with db.session() as session:
        histogram.refresh(session)
    with db.session() as session:  # id 2 commits late, below the highest id already read
        session.add_all([run(2, 20.0), run(4, 0.2)])
    with db.session() as session:
        histogram.refresh(session)
        histogram.refresh(session)
    [sample] = histogram.family().samples[-1:]
    buckets = {s.labels["le"]: s.value for s in histogram.family().samples
               if s.name.endswith("_bucket")}
    assert buckets == {"1.0": 2, "10.0": 3, "+Inf": 4}
    assert sample.name.endswith("_sum") and sample.value == pytest.approx(25.7)


# --- Several gunicorn processes -----------------------------------------------------------------


def test_gunicorn_conf_creates_and_removes_a_directory_when_none_is_given(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOUNDKIT_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("SOUNDKIT_SECRET_KEY", SECRET)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    hooks = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    hooks["on_starting"](None)
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert folder.is_dir() and folder.name.startswith("soundkit-metrics-")
    hooks["on_exit"](None)
    assert not folder.exists()


@pytest.fixture
def gunicorn_env(tmp_path: Path) -> dict[str, str]:
    var = tmp_path / "var"
    env = {"SOUNDKIT_VAR_DIR": str(var), "SOUNDKIT_SECRET_KEY": SECRET,
           "SOUNDKIT_OPS_TOKEN": OPS_TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
           "SOUNDKIT_LOG_LEVEL": "WARNING"}
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "counter_1.db").write_bytes(b"left over from an earlier run")
    migrate.upgrade(f"sqlite:///{var / 'soundkit.db'}")
    return env


@pytest.fixture
def gunicorn(gunicorn_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """Two sync workers, each replaced after 4 requests: many processes serve the test."""
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--max-requests", "4", "api.wsgi:app"],
        cwd=ROOT, env={**os.environ, **gunicorn_env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, 60, "gunicorn to serve")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.integration
def test_every_gunicorn_process_reports_the_same_totals(gunicorn: str, tmp_path: Path) -> None:
    def hit(_: int) -> int:
        return requests.get(f"{gunicorn}/healthz", timeout=10).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert set(pool.map(hit, range(23))) == {200}  # 24 with the start-up check

    headers = {"Authorization": f"Bearer {OPS_TOKEN}"}
    totals = []
    for _ in range(6):  # scrapes land on different, freshly started processes
        text = requests.get(f"{gunicorn}/metrics", headers=headers, timeout=10).text
        totals.append(value(scrape(text=text), "soundkit_http_requests",
                            "soundkit_http_requests_total", method="GET", endpoint="healthz",
                            status="200"))
    assert totals == [24.0] * 6
    counters = list((tmp_path / "prom").glob("counter_*.db"))
    assert len(counters) >= 5  # 24 requests at 4 per process
    assert not (tmp_path / "prom" / "counter_1.db").exists()  # emptied at start
