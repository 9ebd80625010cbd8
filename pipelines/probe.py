"""Probe and validate an upload before anything decodes it.

Order of checks, cheapest and safest first:

1. size (``stat``) -> ``file_size_check_failed``;
2. magic bytes in pure Python (:mod:`pipelines.sniff`) -> the demuxer to pin,
   or ``file_format_check_failed``; for WAV/AIFF, a cut sample chunk
   (:mod:`pipelines.chunks`);
3. ffprobe, pinned to that demuxer with the ``file``-only protocol whitelist
   (:mod:`pipelines.inputs`), under the timeout and memory limit;
4. stream checks: exactly one audio stream, a codec allowed for the container,
   no video except attached cover art, sample rate and channels in bounds;
5. the header duration against the 5 s - 10 min window.

The header duration is only trusted as a fast path. When ffmpeg had to
*estimate* it from the bitrate (MP3 without a Xing/Info header, raw ADTS) the
bounds are left to :func:`pipelines.process`, which checks the duration it
actually decoded anyway, because a header can lie in both directions.

ffmpeg-python has no ffprobe command builder (its ``probe()`` runs the process
itself, without timeout or output bounds), so the short ffprobe argument list
is assembled here and run by :func:`pipelines.ffmpeg_run.run_tool`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pipelines.chunks import check_chunks
from pipelines.errors import (
    DURATION_CHECK_FAILED,
    FILE_SIZE_CHECK_FAILED,
    MediaProcessingError,
    MediaRejected,
)
from pipelines.ffmpeg_run import ToolRun, run_tool
from pipelines.inputs import file_url, input_args
from pipelines.limits import MediaLimits
from pipelines.sniff import Sniffed, reject, sniff_file

SHOW_ENTRIES: Final = (
    "format=format_name,duration,bit_rate"
    ":stream=index,codec_type,codec_name,sample_rate,channels,duration,bit_rate"
    ":stream_disposition=attached_pic"
)
_ESTIMATED: Final = "Estimating duration from bitrate"


@dataclass(frozen=True)
class ProbeResult:
    """What the container header says about a validated upload."""

    container: str  # ffprobe's format_name for the pinned demuxer
    codec: str
    duration_s: float  # from the header; process() reports the decoded duration
    sample_rate: int
    channels: int
    bit_rate: int | None
    demuxer: str = ""  # the pinned ``-f`` value; process() re-sniffs when empty
    duration_estimated: bool = False  # header had no duration, ffmpeg guessed from bitrate


def probe(path: Path, limits: MediaLimits) -> ProbeResult:
    """Validate ``path`` and describe it, or raise :class:`MediaRejected`.

    Raises :class:`MediaProcessingError` (or :class:`MediaTimeout`) when ffprobe
    itself cannot run, crashes or times out.
    """
    check_size(path, limits)
    sniffed = sniff_file(path)
    check_chunks(path, sniffed)
    info, estimated = _ffprobe(path, sniffed, limits)
    audio = _audio_stream(info, sniffed)
    _check_signal(audio, limits)
    duration = _duration(info, audio)
    if not estimated:
        check_duration(duration, limits, what="header duration")
    return ProbeResult(
        container=str(info["format"]["format_name"]),
        codec=str(audio["codec_name"]),
        duration_s=duration,
        sample_rate=int(audio["sample_rate"]),
        channels=int(audio["channels"]),
        bit_rate=_int_or_none(info["format"].get("bit_rate")),
        demuxer=sniffed.demuxer,
        duration_estimated=estimated,
    )


def check_size(path: Path, limits: MediaLimits) -> None:
    """Refuse empty and oversized files before reading any content."""
    size = path.stat().st_size
    if size == 0:
        raise MediaRejected(FILE_SIZE_CHECK_FAILED, "the file is empty")
    if size > limits.max_file_size_bytes:
        raise MediaRejected(
            FILE_SIZE_CHECK_FAILED,
            f"file is {size} bytes, above the {limits.max_file_size_bytes} byte limit",
        )


def check_duration(duration_s: float, limits: MediaLimits, *, what: str) -> None:
    """Refuse durations outside [min_duration_s, max_duration_s]."""
    if duration_s < limits.min_duration_s:
        raise MediaRejected(
            DURATION_CHECK_FAILED,
            f"{what} {duration_s:.1f} s is below the {limits.min_duration_s:g} s minimum",
        )
    if duration_s > limits.max_duration_s:
        raise MediaRejected(
            DURATION_CHECK_FAILED,
            f"{what} {duration_s:.1f} s is above the {limits.max_duration_s:g} s maximum",
        )


def ffprobe_argv(path: Path, demuxer: str, limits: MediaLimits) -> list[str]:
    """The ffprobe command line: pinned input, JSON out, warnings on stderr."""
    return [
        limits.ffprobe,
        "-hide_banner",
        "-loglevel",
        "level+warning",
        "-threads",
        str(limits.threads),
        *input_args(demuxer),
        "-show_entries",
        SHOW_ENTRIES,
        "-of",
        "json",
        "-i",
        file_url(path),
    ]


def _ffprobe(path: Path, sniffed: Sniffed, limits: MediaLimits) -> tuple[dict[str, Any], bool]:
    """Run ffprobe; return its parsed JSON and whether the duration was estimated."""
    run = run_tool(
        ffprobe_argv(path, sniffed.demuxer, limits),
        timeout_s=limits.timeout_s,
        memory_limit_bytes=limits.memory_limit_bytes,
        capture_stdout=True,
    )
    if run.returncode < 0:
        raise MediaProcessingError(
            f"ffprobe was killed by signal {-run.returncode}:\n{run.summary()}"
        )
    if run.returncode > 0:
        raise reject(f"{sniffed.label} file could not be read: {run.summary() or 'no detail'}")
    info = _parse_json(run)
    if info.get("format", {}).get("format_name") != sniffed.format_name:
        raise reject(f"ffprobe did not open the file as {sniffed.label}")
    return info, any(_ESTIMATED in line for line in run.stderr_tail)


def _parse_json(run: ToolRun) -> dict[str, Any]:
    try:
        info = json.loads(run.stdout)
    except ValueError as exc:
        raise MediaProcessingError(f"ffprobe printed invalid JSON: {exc}") from exc
    if not isinstance(info, dict) or not isinstance(info.get("format"), dict):
        raise MediaProcessingError("ffprobe JSON has no format section")
    return info


def _audio_stream(info: dict[str, Any], sniffed: Sniffed) -> dict[str, Any]:
    """The one audio stream, after refusing video and disallowed codecs."""
    streams: list[dict[str, Any]] = list(info.get("streams") or [])
    for stream in streams:
        is_cover = stream.get("disposition", {}).get("attached_pic") == 1
        if stream.get("codec_type") == "video" and not is_cover:
            raise reject(
                f"contains a video stream ({stream.get('codec_name', 'unknown codec')}); "
                "video files are not accepted"
            )
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if len(audio) != 1:
        raise reject(f"expected exactly one audio stream, found {len(audio)}")
    codec = audio[0].get("codec_name", "unknown")
    if codec not in sniffed.codecs:
        allowed = ", ".join(sorted(sniffed.codecs))
        raise reject(f"codec {codec!r} is not accepted in {sniffed.label} (allowed: {allowed})")
    return audio[0]


def _check_signal(audio: dict[str, Any], limits: MediaLimits) -> None:
    """Sample rate and channel count within bounds (0 means ffprobe could not tell)."""
    rate = _int_or_none(audio.get("sample_rate")) or 0
    channels = _int_or_none(audio.get("channels")) or 0
    if not limits.min_sample_rate <= rate <= limits.max_sample_rate:
        raise reject(
            f"sample rate {rate} Hz is outside {limits.min_sample_rate}-{limits.max_sample_rate} Hz"
        )
    if not limits.min_channels <= channels <= limits.max_channels:
        raise reject(f"{channels} channels is outside {limits.min_channels}-{limits.max_channels}")


def _duration(info: dict[str, Any], audio: dict[str, Any]) -> float:
    for raw in (info["format"].get("duration"), audio.get("duration")):
        value = _float_or_none(raw)
        if value is not None and value >= 0:
            return value
    raise MediaRejected(DURATION_CHECK_FAILED, "the duration cannot be determined from the file")


def _int_or_none(raw: object) -> int | None:
    try:
        return int(str(raw))
    except ValueError:
        return None


def _float_or_none(raw: object) -> float | None:
    try:
        value = float(str(raw))
    except ValueError:
        return None
    return value if value == value else None  # NaN -> None
