"""The process-wide services a request uses, built once in ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from soundkit.db import Database
from soundkit.queue import Dispatcher
from soundkit.settings import Settings
from soundkit.storage import ObjectStore


@dataclass
class Services:
    settings: Settings
    db: Database
    store: ObjectStore
    dispatcher: Dispatcher


def services() -> Services:
    found: Services = current_app.extensions["soundkit"]
    return found
