"""Per-job scratch directories that never outlive the job."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def job_workdir(base: Path | None = None) -> Iterator[Path]:
    """Create a private (0700) temporary directory and always remove it.

    Everything a job writes -- the downloaded source, ffmpeg outputs -- lives in
    here, so removing one directory on success, rejection, error or
    cancellation is all the cleanup there is. ``base`` defaults to the system
    temporary directory.
    """
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="soundkit-job-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
