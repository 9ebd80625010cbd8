"""Pure audio processing: files in, dataclasses and numpy arrays out."""

from pipelines.errors import (
    DURATION_CHECK_FAILED,
    FILE_SIZE_CHECK_FAILED,
    FORMAT_CHECK_FAILED,
    MediaProcessingError,
    MediaRejected,
    MediaTimeout,
    RejectReason,
)
from pipelines.limits import MediaLimits
from pipelines.probe import ProbeResult, probe

__all__ = [
    "DURATION_CHECK_FAILED",
    "FILE_SIZE_CHECK_FAILED",
    "FORMAT_CHECK_FAILED",
    "MediaLimits",
    "MediaProcessingError",
    "MediaRejected",
    "MediaTimeout",
    "ProbeResult",
    "RejectReason",
    "probe",
]
