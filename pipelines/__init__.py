"""Pure audio processing: files in, dataclasses and numpy arrays out.

No web framework, task queue or database here; the worker calls:

* :func:`probe` -- sniff, pin the demuxer, ffprobe, validate; raises
  :class:`MediaRejected` with a public ``fail_reason``;
* :func:`process` -- one ffmpeg decode pass writing playback, preview, analysis
  PCM and loudness, then waveform peaks with numpy;
* :func:`decode_analysis` -- the analysis PCM alone, for audio that is only
  fingerprinted (catalog registration, identification);
* :func:`job_workdir` -- the per-job temporary directory, always removed;
* :func:`load_analysis_pcm` -- the mono float32 analysis signal at
  :data:`ANALYSIS_SAMPLE_RATE`.

Fingerprinting lives in :mod:`pipelines.fingerprint`.
"""

from pipelines.analysis import ANALYSIS_SAMPLE_RATE, load_analysis_pcm
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
from pipelines.loudness import Loudness
from pipelines.probe import ProbeResult, probe
from pipelines.transcode import ProcessedMedia, decode_analysis, process
from pipelines.workdir import job_workdir

__all__ = [
    "ANALYSIS_SAMPLE_RATE",
    "DURATION_CHECK_FAILED",
    "FILE_SIZE_CHECK_FAILED",
    "FORMAT_CHECK_FAILED",
    "Loudness",
    "MediaLimits",
    "MediaProcessingError",
    "MediaRejected",
    "MediaTimeout",
    "ProbeResult",
    "ProcessedMedia",
    "RejectReason",
    "decode_analysis",
    "job_workdir",
    "load_analysis_pcm",
    "probe",
    "process",
]
