"""The worker process's services, built once per process from the settings."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache

from pipelines import MediaLimits
from soundkit.db import Database
from soundkit.queue import Dispatcher, make_celery
from soundkit.settings import Settings, load_settings
from soundkit.storage import ObjectStore, open_store


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: ObjectStore
    dispatcher: Dispatcher

    @property
    def limits(self) -> MediaLimits:
        s = self.settings
        return MediaLimits(min_duration_s=s.min_duration_s, max_duration_s=s.max_duration_s,
                           timeout_s=s.ffmpeg_timeout_s, ffmpeg=s.ffmpeg, ffprobe=s.ffprobe)

    @property
    def worker_id(self) -> str:
        """Names the lease owner: host and pid, so an operator can find the process."""
        return f"{socket.gethostname()}:{os.getpid()}"


@cache
def runtime() -> Runtime:
    settings = load_settings()
    return Runtime(settings=settings, db=Database(settings.database_url),
                   store=open_store(settings),
                   dispatcher=Dispatcher(make_celery(settings)))
