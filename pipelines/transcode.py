"""The single decode pass: one ffmpeg process produces every output.

Decoding is the expensive, risky part of handling an untrusted file, so it
happens exactly once. The decoded audio is brought to 44.1 kHz stereo, runs
through ``ebur128`` (which measures loudness and passes the audio through
unchanged) and is split three ways::

    [0:a:0] -> aformat 44.1k stereo -> ebur128 -> asplit
        asplit -> AAC 128k                              -> playback.m4a
        asplit -> atrim 30 s, fades -> AAC 128k         -> preview.m4a
        asplit -> aformat mono f32 ANALYSIS_SAMPLE_RATE -> analysis.f32

Loudness is measured on the 44.1 kHz stereo signal that the playback file
carries, i.e. what a listener hears. The waveform is computed afterwards from
the analysis PCM with numpy, not by decoding again.

Safety, in addition to the pinned input of :mod:`pipelines.inputs`:

* the input is read for at most ``max_duration_s + DECODE_MARGIN_S`` seconds
  (``-t`` on the input), so a small file that decodes to hours costs at most
  ten minutes of decoding, and the duration that was actually decoded (counted
  in analysis samples) is checked against the bounds and against the header;
* ``-nostdin``, ``-n`` (never overwrite), one thread, a timeout, ``RLIMIT_AS``;
* outputs go to a fresh directory created inside the caller's ``workdir``,
  which also guarantees that no output can collide with the source file.

Metadata: ``-map_metadata -1``, ``-map_chapters -1``, and ``+bitexact`` (no
encoder-version tag). Only filter outputs are mapped, so cover art, other
streams and their tags never reach the outputs.

The preview is 30 s starting a quarter of the way into the track (clamped so it
ends at the end at the latest): past most intros, where the song is. Tracks of
30 s or less, and tracks whose header duration is only an estimate, preview
from the start. It fades in over 0.5 s when it does not start at 0 and fades out
over its last second when cut.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import ffmpeg

from pipelines.analysis import ANALYSIS_SAMPLE_RATE, load_analysis_pcm, pcm_duration_s
from pipelines.errors import DURATION_CHECK_FAILED, MediaProcessingError, MediaRejected
from pipelines.ffmpeg_run import ToolRun, run_tool
from pipelines.inputs import file_url, input_options
from pipelines.limits import MediaLimits
from pipelines.loudness import Loudness, parse_ebur128_summary
from pipelines.probe import ProbeResult, check_duration
from pipelines.sniff import reject, sniff_file
from pipelines.waveform import write_waveform

PLAYBACK_RATE: Final = 44100
PLAYBACK_LAYOUT: Final = "stereo"
AAC_BITRATE: Final = "128k"
PREVIEW_SECONDS: Final = 30.0
PREVIEW_POSITION: Final = 0.25
PREVIEW_FADE_IN_S: Final = 0.5
PREVIEW_FADE_OUT_S: Final = 1.0
#: Read this much past the maximum so "too long" is provable from the output.
DECODE_MARGIN_S: Final = 1.0
#: Slack for priming/padding samples when comparing decoded durations to bounds.
DURATION_TOLERANCE_S: Final = 0.25
#: ffmpeg fails (exit status 69) when more than this share of packets fail to decode.
MAX_ERROR_RATE: Final = 0.1
_ERROR_RATE_EXIT: Final = 69


@dataclass(frozen=True)
class ProcessedMedia:
    """The files and figures produced by :func:`process` inside the workdir."""

    playback: Path  # AAC-LC 128 kbps 44.1 kHz stereo .m4a, faststart, no source metadata
    preview: Path  # 30 s (or the whole track if shorter), same encoding
    analysis_pcm: Path  # raw mono float32 little-endian at ANALYSIS_SAMPLE_RATE
    waveform: Path  # JSON peaks, see pipelines.waveform
    loudness: Loudness
    duration_s: float  # of the decoded audio, not the header
    preview_start_s: float = 0.0


@dataclass(frozen=True)
class PreviewWindow:
    """Where the preview clip starts, in seconds of the source."""

    start_s: float

    @property
    def fades_in(self) -> bool:
        return self.start_s > 0


@dataclass(frozen=True)
class OutputPaths:
    """File names of the outputs inside one fresh directory."""

    directory: Path

    @property
    def playback(self) -> Path:
        return self.directory / "playback.m4a"

    @property
    def preview(self) -> Path:
        return self.directory / "preview.m4a"

    @property
    def analysis_pcm(self) -> Path:
        return self.directory / "analysis.f32"

    @property
    def waveform(self) -> Path:
        return self.directory / "waveform.json"


def preview_window(probed: ProbeResult) -> PreviewWindow:
    """Choose the preview start from the header duration (see module docstring)."""
    duration = probed.duration_s
    if probed.duration_estimated or duration <= PREVIEW_SECONDS:
        return PreviewWindow(0.0)
    start = min(duration * PREVIEW_POSITION, duration - PREVIEW_SECONDS)
    return PreviewWindow(round(max(start, 0.0), 1))


def process(src: Path, probed: ProbeResult, workdir: Path, limits: MediaLimits) -> ProcessedMedia:
    """Decode ``src`` once and write playback, preview, analysis PCM and waveform.

    ``probed`` must come from :func:`pipelines.probe` on the same file. Raises
    :class:`MediaRejected` when the decoded audio contradicts validation (too
    long, too short, truncated, undecodable) and :class:`MediaProcessingError` /
    :class:`MediaTimeout` when ffmpeg fails.
    """
    demuxer = _pinned_demuxer(src, probed)
    out = OutputPaths(Path(tempfile.mkdtemp(prefix="media-", dir=workdir)))
    window = preview_window(probed)
    run = run_tool(
        build_command(src, demuxer, out, window, limits),
        timeout_s=limits.timeout_s,
        memory_limit_bytes=limits.memory_limit_bytes,
    )
    _check_exit(run)
    _require_outputs(out, run)
    decoded = pcm_duration_s(out.analysis_pcm)
    check_decoded_duration(decoded, probed, limits)
    loudness = parse_ebur128_summary(run.stderr_tail)
    if loudness is None:
        raise MediaProcessingError("ffmpeg printed no EBU R128 summary:\n" + run.summary())
    write_waveform(load_analysis_pcm(out.analysis_pcm), out.waveform)
    return ProcessedMedia(
        playback=out.playback,
        preview=out.preview,
        analysis_pcm=out.analysis_pcm,
        waveform=out.waveform,
        loudness=loudness,
        duration_s=round(decoded, 3),
        preview_start_s=window.start_s,
    )


def _pinned_demuxer(src: Path, probed: ProbeResult) -> str:
    """Sniff again: the file must still be what probe() validated."""
    sniffed = sniff_file(src)
    if probed.demuxer and probed.demuxer != sniffed.demuxer:
        raise reject(
            f"file is now {sniffed.label}, but was validated as demuxer {probed.demuxer!r}"
        )
    return sniffed.demuxer


def build_command(
    src: Path, demuxer: str, out: OutputPaths, window: PreviewWindow, limits: MediaLimits
) -> list[str]:
    """The complete ffmpeg command line for the single pass, built with ffmpeg-python."""
    source = ffmpeg.input(
        file_url(src),
        t=f"{limits.max_duration_s + DECODE_MARGIN_S:g}",
        threads=limits.threads,
        **input_options(demuxer),
    )
    shared = (
        source["a:0"]
        .filter("aformat", sample_rates=PLAYBACK_RATE, channel_layouts=PLAYBACK_LAYOUT)
        .filter("ebur128", peak="true", framelog="verbose")
        .filter_multi_output("asplit", 3)
    )
    outputs = [
        _aac_output(shared.stream(0), out.playback, limits),
        _aac_output(_preview_chain(shared.stream(1), window), out.preview, limits),
        _analysis_output(shared.stream(2), out.analysis_pcm),
    ]
    command = ffmpeg.merge_outputs(*outputs).global_args(*_global_args(limits))
    argv: list[str] = command.compile(cmd=limits.ffmpeg)
    return argv


def _global_args(limits: MediaLimits) -> list[str]:
    return [
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "level+info",
        "-filter_complex_threads",
        str(limits.threads),
        "-max_error_rate",
        f"{MAX_ERROR_RATE:g}",
        "-n",
    ]


def decode_analysis(src: Path, probed: ProbeResult, workdir: Path, limits: MediaLimits) -> Path:
    """Decode ``src`` to the analysis PCM alone; returns the raw float32 file's path.

    For audio that is only fingerprinted, never played (catalog registration,
    identification): the same pinned input, the same analysis output and the same
    decoded-duration checks as :func:`process`, without the two AAC encodes and the
    loudness pass, which cost about ten times the decode. Raises like :func:`process`.
    """
    demuxer = _pinned_demuxer(src, probed)
    out = OutputPaths(Path(tempfile.mkdtemp(prefix="analysis-", dir=workdir)))
    source = ffmpeg.input(
        file_url(src),
        t=f"{limits.max_duration_s + DECODE_MARGIN_S:g}",
        threads=limits.threads,
        **input_options(demuxer),
    )
    command = _analysis_output(source["a:0"], out.analysis_pcm).global_args(
        *_global_args(limits))
    run = run_tool(
        command.compile(cmd=limits.ffmpeg),
        timeout_s=limits.timeout_s,
        memory_limit_bytes=limits.memory_limit_bytes,
    )
    _check_exit(run)
    if not out.analysis_pcm.is_file():
        raise MediaProcessingError(f"ffmpeg did not write {out.analysis_pcm.name}:\n"
                                   + run.summary())
    check_decoded_duration(pcm_duration_s(out.analysis_pcm), probed, limits)
    return out.analysis_pcm


def _preview_chain(stream: Any, window: PreviewWindow) -> Any:
    clip = stream.filter("atrim", start=window.start_s, duration=PREVIEW_SECONDS).filter(
        "asetpts", "PTS-STARTPTS"
    )
    if window.fades_in:
        clip = clip.filter("afade", t="in", st=0, d=PREVIEW_FADE_IN_S)
    return clip.filter(
        "afade", t="out", st=PREVIEW_SECONDS - PREVIEW_FADE_OUT_S, d=PREVIEW_FADE_OUT_S
    )


def _aac_output(stream: Any, path: Path, limits: MediaLimits) -> Any:
    """AAC-LC 128 kbps 44.1 kHz stereo in an M4A (``ipod``) with the moov atom first."""
    options: dict[str, Any] = {
        "f": "ipod",
        "c:a": "aac",
        "profile:a": "aac_low",
        "b:a": AAC_BITRATE,
        "ar": PLAYBACK_RATE,
        "ac": 2,
        "movflags": "+faststart",
        "fflags": "+bitexact",
        "map_metadata": -1,
        "map_chapters": -1,
        "threads": limits.threads,
    }
    return ffmpeg.output(stream, file_url(path), **options)


def _analysis_output(stream: Any, path: Path) -> Any:
    mono = stream.filter(
        "aformat", sample_fmts="flt", sample_rates=ANALYSIS_SAMPLE_RATE, channel_layouts="mono"
    )
    return ffmpeg.output(mono, file_url(path), f="f32le", acodec="pcm_f32le", map_metadata=-1)


def _check_exit(run: ToolRun) -> None:
    if run.returncode == _ERROR_RATE_EXIT:
        raise reject(
            f"more than {MAX_ERROR_RATE:.0%} of the audio failed to decode "
            f"(corrupt file):\n{run.summary()}"
        )
    if run.returncode != 0:
        how = (
            f"was killed by signal {-run.returncode}"
            if run.returncode < 0
            else f"exited with status {run.returncode}"
        )
        raise MediaProcessingError(f"ffmpeg {how}:\n{run.summary()}")


def truncation_tolerance_s(header_duration_s: float) -> float:
    """How much shorter than its header a decode may be before the file counts as cut."""
    return max(0.5, 0.02 * header_duration_s)


def check_decoded_duration(decoded_s: float, probed: ProbeResult, limits: MediaLimits) -> None:
    """Hold the decoded duration to the bounds and to the header's promise.

    Order matters: "too long" first (a decompression bomb whose header lies),
    then "shorter than the header says" (truncated or corrupt: a format
    problem, not a duration one), then the plain bounds.
    """
    header = probed.duration_s
    if decoded_s <= 0:
        raise reject("no audio could be decoded")
    if decoded_s > limits.max_duration_s + DURATION_TOLERANCE_S:
        raise MediaRejected(
            DURATION_CHECK_FAILED,
            f"decoding was stopped at {decoded_s:.1f} s, above the "
            f"{limits.max_duration_s:g} s maximum (the header claimed {header:.1f} s)",
        )
    if not probed.duration_estimated and decoded_s < header - truncation_tolerance_s(header):
        raise reject(
            f"truncated or corrupt: the header says {header:.1f} s "
            f"but only {decoded_s:.1f} s could be decoded"
        )
    # Within the tolerance of a bound counts as on the bound (encoder padding).
    clamped = min(max(decoded_s, limits.min_duration_s), limits.max_duration_s)
    effective = clamped if abs(decoded_s - clamped) <= DURATION_TOLERANCE_S else decoded_s
    check_duration(effective, limits, what="decoded duration")


def _require_outputs(out: OutputPaths, run: ToolRun) -> None:
    """All three files must exist; an empty analysis PCM means nothing decoded."""
    for path in (out.playback, out.preview, out.analysis_pcm):
        if not path.is_file():
            raise MediaProcessingError(f"ffmpeg did not write {path.name}:\n{run.summary()}")
