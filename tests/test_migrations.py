"""Models and migrations never drift: ``upgrade head`` then ``alembic check`` on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundkit import migrate


def test_sqlite_upgrade_head_and_check(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    migrate.check(url)


@pytest.mark.integration
def test_postgresql_upgrade_head_and_check(pg_url: str) -> None:
    migrate.upgrade(pg_url)  # already at head: a no-op that must not fail
    migrate.check(pg_url)
