"""gunicorn reads this file from its working directory (``make api``, ``make run``, the image).

It gives the api's worker processes one directory in which to share their HTTP metrics
(prometheus-client's multiprocess mode, see ``api/metrics.py``). prometheus-client
decides at import time whether it runs in that mode, so the directory must be in the
environment before any worker imports it: the master sets it in ``on_starting``, before
it forks. This file therefore imports nothing but the settings.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from soundkit.settings import load_settings

_created: list[Path] = []


def on_starting(server: Any) -> None:
    """Use ``PROMETHEUS_MULTIPROC_DIR`` (emptied: old counts are not this run's) or a fresh one."""
    configured = load_settings().prometheus_multiproc_dir
    if configured is not None:
        for stale in configured.glob("*.db"):
            stale.unlink()
        return
    folder = Path(tempfile.mkdtemp(prefix="soundkit-metrics-"))
    _created.append(folder)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def child_exit(server: Any, worker: Any) -> None:
    """A worker's counters stay (they are history); its live gauges, if any, go."""
    from prometheus_client import multiprocess

    folder = load_settings().prometheus_multiproc_dir
    if folder is not None:
        multiprocess.mark_process_dead(worker.pid, str(folder))


def on_exit(server: Any) -> None:
    for folder in _created:
        shutil.rmtree(folder, ignore_errors=True)
