"""Exceptions raised by the media pipeline.

Two families, because the worker treats them differently:

* :class:`MediaRejected` -- the *input* is bad (wrong format, wrong duration,
  wrong size). Retrying cannot help, so the job ends ``FAILED`` with the
  machine-readable ``reason`` (one of the public ``fail_reason`` values of the
  API) and a human-readable ``detail``.
* :class:`MediaProcessingError` -- ffmpeg/ffprobe failed, crashed or timed out
  on input that passed validation. That is our problem, not the uploader's; the
  worker decides whether to retry. ``detail`` is a bounded summary of the
  tool's stderr, fit for the job's ``error_detail`` column.

Both keep their constructor arguments in ``args`` so they survive pickling
(Celery result backends and multiprocessing pools pickle exceptions).
"""

from __future__ import annotations

from typing import Final, Literal

RejectReason = Literal[
    "file_format_check_failed",
    "duration_check_failed",
    "file_size_check_failed",
]

FORMAT_CHECK_FAILED: Final = "file_format_check_failed"
DURATION_CHECK_FAILED: Final = "duration_check_failed"
FILE_SIZE_CHECK_FAILED: Final = "file_size_check_failed"

REJECT_REASONS: Final[frozenset[str]] = frozenset(
    {FORMAT_CHECK_FAILED, DURATION_CHECK_FAILED, FILE_SIZE_CHECK_FAILED}
)


class MediaRejected(Exception):
    """The uploaded file is not acceptable; never retried."""

    reason: RejectReason
    detail: str

    def __init__(self, reason: RejectReason, detail: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class MediaProcessingError(Exception):
    """ffmpeg or ffprobe failed on input that passed validation."""

    detail: str

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class MediaTimeout(MediaProcessingError):
    """A tool ran past its wall-clock limit and was killed with its process group."""
