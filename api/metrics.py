"""``/metrics``: the jobs, the queues and the api itself in Prometheus' text format.

gunicorn runs several api processes and a scrape reaches only one of them, so the
metrics are collected in two ways:

- **Everything about jobs, queues and webhooks is read at scrape time** from the
  database and the broker by :class:`SoundkitCollector`. Every process answers the
  same, and a restarted process loses nothing. Stage durations are a real histogram
  built from the ``stage_runs`` rows: each process reads only the rows added since its
  previous scrape (:class:`StageHistogram`), so the counters stay monotonic and a
  scrape stays cheap however long the table grows.
- **HTTP request counts and latencies** happen in whichever process served the
  request. With ``PROMETHEUS_MULTIPROC_DIR`` set they use prometheus-client's
  multiprocess mode: each process writes memory-mapped files in that directory and a
  scrape adds every process's files up. ``gunicorn.conf.py`` creates (or empties) the
  directory before gunicorn forks its workers, because prometheus-client decides at
  import time; without gunicorn (tests, a single process) they live in the process.

Latency is measured until the view returns its response (time to first byte), which
is what matters for streamed media and uploads alike.

Reading needs an operator's session or ``Authorization: Bearer $SOUNDKIT_OPS_TOKEN``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.services import Services
from api.web.ops import bearer_token_ok
from api.web.signin import current_user
from soundkit import ops
from soundkit.db import Database
from soundkit.models import FailReason, Stage, StageRun, UploadStatus, utcnow
from soundkit.settings import Settings

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0)
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                 900.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Stage runs committed out of id order by at most this many ids are still counted.
STAGE_ID_LOOKBACK = 10000


# --- Stage durations from the database ------------------------------------------------------------


class StageHistogram:
    """Cumulative stage-duration buckets, kept up to date from ``stage_runs``.

    PostgreSQL hands out ids when rows are inserted, not when they commit, so a row can
    appear below the highest id already read. Each refresh therefore looks back
    ``STAGE_ID_LOOKBACK`` ids and skips the ones it has counted.
    """

    def __init__(self, buckets: tuple[float, ...] = STAGE_BUCKETS) -> None:
        self.bounds = (*buckets, math.inf)
        self._lock = threading.Lock()
        self._upto = 0
        self._recent: set[int] = set()
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._sums: dict[tuple[str, str], float] = {}

    def refresh(self, session: Session) -> None:
        with self._lock:
            top = session.scalar(select(func.max(StageRun.id))) or 0
            low = max(0, self._upto - STAGE_ID_LOOKBACK)
            rows = session.execute(
                select(StageRun.id, StageRun.stage, StageRun.outcome, StageRun.started_at,
                       StageRun.finished_at)
                .where(StageRun.id > low, StageRun.id <= top)
                .order_by(StageRun.id).execution_options(yield_per=5000))
            keep_from = top - STAGE_ID_LOOKBACK
            for run_id, stage, outcome, started, finished in rows:
                if run_id in self._recent:
                    continue
                self._add((stage, outcome), max(0.0, (finished - started).total_seconds()))
                if run_id > keep_from:
                    self._recent.add(run_id)
            self._recent = {i for i in self._recent if i > keep_from}
            self._upto = max(self._upto, top)

    def _add(self, key: tuple[str, str], seconds: float) -> None:
        counts = self._counts.setdefault(key, [0] * len(self.bounds))
        for index, bound in enumerate(self.bounds):
            if seconds <= bound:
                counts[index] += 1
                break
        self._sums[key] = self._sums.get(key, 0.0) + seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "soundkit_stage_duration_seconds",
            "How long each ingest stage took, by outcome (ok, rejected, error).",
            labels=["stage", "outcome"])
        with self._lock:
            for (stage, outcome), counts in sorted(self._counts.items()):
                cumulative, buckets = 0, []
                for bound, count in zip(self.bounds, counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if math.isinf(bound) else repr(bound), cumulative))
                family.add_metric([stage, outcome], buckets, self._sums[(stage, outcome)])
        return family


# --- Everything else from the database and the broker ---------------------------------------------


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class SoundkitCollector:
    """Reads the jobs, webhooks and queues at scrape time (see the module docstring)."""

    def __init__(self, db: Database, settings: Settings,
                 depths: Callable[[Settings], ops.BrokerQueues] = ops.queue_depths) -> None:
        self.db = db
        self.settings = settings
        self.depths = depths
        self.stages = StageHistogram()

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; collect() reads the database

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        with self.db.session() as session:
            yield self._uploads(ops.uploads_by_status(session))
            yield self._stages(ops.jobs_by_status_and_stage(session))
            yield _gauge("soundkit_stalled_uploads",
                         "Jobs whose lease expired, that no worker picked up, or whose bytes "
                         "stopped arriving.", ops.count_stalled(session, now))
            oldest = ops.oldest_waiting(session, now)
            yield _gauge("soundkit_oldest_waiting_job_age_seconds",
                         "Age of the oldest job waiting for a worker (0 when none waits).",
                         oldest["age_s"] if oldest else 0.0)
            yield from self._webhooks(ops.webhook_backlog(session, now, limit=0))
            self.stages.refresh(session)
        yield self.stages.family()
        yield from self._broker()

    def _uploads(self, rows: list[dict[str, Any]]) -> GaugeMetricFamily:
        counts: dict[tuple[str, str], int] = {(str(s), ""): 0 for s in UploadStatus
                                              if s != UploadStatus.FAILED}
        counts.update({(str(UploadStatus.FAILED), str(r)): 0 for r in FailReason})
        for row in rows:
            counts[(row["status"], row["fail_reason"] or "")] = row["count"]
        family = GaugeMetricFamily("soundkit_uploads",
                                   "Uploads by status and, for FAILED ones, fail_reason.",
                                   labels=["status", "fail_reason"])
        for (status, reason), count in sorted(counts.items()):
            family.add_metric([status, reason], count)
        return family

    def _stages(self, rows: list[dict[str, Any]]) -> GaugeMetricFamily:
        counts = {str(s): 0 for s in Stage if s not in (Stage.RECEIVING, Stage.DONE)}
        for row in rows:
            if row["status"] == UploadStatus.PROCESSING:
                counts[row["stage"]] = row["count"]
        family = GaugeMetricFamily("soundkit_processing_uploads",
                                   "PROCESSING jobs by the stage they are in.", labels=["stage"])
        for stage, count in counts.items():
            family.add_metric([stage], count)
        return family

    def _webhooks(self, backlog: dict[str, Any]) -> Iterator[Metric]:
        family = GaugeMetricFamily("soundkit_webhook_deliveries",
                                   "Webhook deliveries by status.", labels=["status"])
        for status in ("pending", "delivered", "failed"):
            family.add_metric([status], backlog[status])
        yield family
        yield _gauge("soundkit_webhook_backlog", "Webhook deliveries waiting to be sent.",
                     backlog["pending"])
        yield _gauge("soundkit_webhook_failing",
                     "Pending webhook deliveries whose last attempt failed.", backlog["failing"])
        yield _gauge("soundkit_webhook_oldest_pending_age_seconds",
                     "Age of the oldest pending webhook delivery (0 when none).",
                     backlog["oldest_pending_age_s"] or 0.0)

    def _broker(self) -> Iterator[Metric]:
        state = self.depths(self.settings)
        yield _gauge("soundkit_broker_up", "1 if the broker answered this scrape.",
                     1.0 if state.reachable else 0.0)
        if not state.reachable:
            return
        family = GaugeMetricFamily("soundkit_queue_depth",
                                   "Messages waiting in each broker queue.", labels=["queue"])
        for queue, depth in state.queues.items():
            family.add_metric([queue], depth)
        yield family
        if state.reserved is not None:
            yield _gauge("soundkit_queue_unacked",
                         "Messages handed to workers and not yet acknowledged (Redis).",
                         state.reserved)


# --- HTTP, per process or across processes --------------------------------------------------


@dataclass
class MetricsState:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    multiprocess: bool


def _multiprocess_ready(settings: Settings) -> bool:
    """Multiprocess mode needs the directory *and* prometheus-client imported with it."""
    if settings.prometheus_multiproc_dir is None:
        return False
    if not getattr(prometheus_values.ValueClass, "_multiprocess", False):
        log.warning("PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported; "
                    "HTTP metrics stay per process")
        return False
    return True


def init_app(app: Flask) -> None:
    svc: Services = app.extensions["soundkit"]
    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created only doubles the output
    registry = CollectorRegistry()
    multiprocess = _multiprocess_ready(svc.settings)
    if multiprocess:
        from prometheus_client import multiprocess as prometheus_multiprocess

        prometheus_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=str(svc.settings.prometheus_multiproc_dir))
    own = None if multiprocess else registry  # multiprocess values are read from the files
    state = MetricsState(
        registry=registry,
        requests=Counter("soundkit_http_requests", "HTTP requests served by the api.",
                         ["method", "endpoint", "status"], registry=own),
        latency=Histogram("soundkit_http_request_duration_seconds",
                          "Time to first byte of api responses.", ["method", "endpoint"],
                          buckets=HTTP_BUCKETS, registry=own),
        multiprocess=multiprocess)
    registry.register(SoundkitCollector(svc.db, svc.settings))
    app.extensions["soundkit_metrics"] = state
    app.before_request(_start_clock)
    app.after_request(_count)
    app.register_blueprint(bp)


def _start_clock() -> None:
    g.metrics_started = time.perf_counter()


def _count(response: Response) -> Response:
    started = g.pop("metrics_started", None)
    if started is None:
        return response
    state: MetricsState = current_app.extensions["soundkit_metrics"]
    endpoint = request.endpoint or "unmatched"
    method = request.method if request.method in METHODS else "OTHER"
    state.requests.labels(method, endpoint, str(response.status_code)).inc()
    state.latency.labels(method, endpoint).observe(time.perf_counter() - started)
    return response


@bp.get("/metrics")
def metrics() -> Response:
    user = current_user()
    if not (user is not None and user.is_operator) and not bearer_token_ok():
        if user is not None:
            return Response("operators only\n", 403, mimetype="text/plain")
        return Response("sign in as an operator or send the ops bearer token\n", 401,
                        {"WWW-Authenticate": 'Bearer realm="soundkit-metrics"'},
                        mimetype="text/plain")
    state: MetricsState = current_app.extensions["soundkit_metrics"]
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(state.registry), content_type=content_type)
