"""Bounds applied to every untrusted media file.

Why each bound exists:

* duration 5 s - 10 min: the product's accepted range (API.md); checked against
  the container header in :func:`pipelines.probe` and again against what was
  actually decoded in :func:`pipelines.process` (a header can lie).
* ``timeout_s``: wall-clock limit per ffmpeg/ffprobe process; a hostile file
  must not hold a worker slot forever.
* sample rate 8 kHz - 192 kHz and 1 - 8 channels: anything outside is either
  broken or not music (a 1 Hz "sample rate" or 255 channels is an attack on the
  resampler, not a song). Refused as ``file_format_check_failed``.
* ``max_file_size_bytes``: the api enforces the upload limit while streaming;
  the pipeline checks again because it may be handed files from elsewhere.
* ``memory_limit_bytes``: address-space limit (``RLIMIT_AS``) of each tool
  process, so a decoder bug or a huge embedded picture cannot exhaust the host.
  ffmpeg needs about 300 MB of address space for this pipeline.
* ``threads``: audio codecs barely use threads; one per process keeps a worker
  at one core per job so concurrency is set by the worker pool alone.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class MediaLimits:
    """Validation bounds and tool settings for one pipeline run."""

    min_duration_s: float = 5.0
    max_duration_s: float = 600.0
    timeout_s: float = 300.0
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    min_sample_rate: int = 8_000
    max_sample_rate: int = 192_000
    min_channels: int = 1
    max_channels: int = 8
    max_file_size_bytes: int = 512 * MIB
    memory_limit_bytes: int | None = 1024 * MIB
    threads: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.min_duration_s < self.max_duration_s:
            raise ValueError("need 0 < min_duration_s < max_duration_s")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if not 0 < self.min_sample_rate <= self.max_sample_rate:
            raise ValueError("need 0 < min_sample_rate <= max_sample_rate")
        if not 0 < self.min_channels <= self.max_channels:
            raise ValueError("need 0 < min_channels <= max_channels")
        if self.max_file_size_bytes <= 0:
            raise ValueError("max_file_size_bytes must be positive")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")
