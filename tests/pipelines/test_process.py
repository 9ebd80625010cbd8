"""process(): one ffmpeg pass, checked from the outside with ffprobe and numpy."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pipelines import (
    ANALYSIS_SAMPLE_RATE,
    DURATION_CHECK_FAILED,
    FORMAT_CHECK_FAILED,
    MediaLimits,
    MediaProcessingError,
    MediaRejected,
    MediaTimeout,
    ProbeResult,
    job_workdir,
    load_analysis_pcm,
    probe,
    process,
)
from pipelines.transcode import DECODE_MARGIN_S, PREVIEW_SECONDS
from tests.pipelines.conftest import (
    FORMAT_NAMES,
    FORMATS,
    SOURCE_SECONDS,
    TAGS,
    TONE_DBFS,
    TONE_HZ,
    OpenWatch,
    Processed,
    ffmpeg,
    ffprobe_json,
    tone,
    write_wav,
)

SINE = "sine=f=440:r=44100"


def audio_stream(info: dict[str, Any]) -> dict[str, Any]:
    streams = info["streams"]
    assert [s["codec_type"] for s in streams] == ["audio"]
    stream: dict[str, Any] = streams[0]
    return stream


def top_level_boxes(path: Path) -> list[str]:
    """ISO-BMFF box types in file order (to check that moov precedes mdat)."""
    data, pos, boxes = path.read_bytes(), 0, []
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append(data[pos + 4 : pos + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        if size < 8:
            break
        pos += size
    return boxes


def dominant_hz(pcm: npt.NDArray[np.float32], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    return float(np.fft.rfftfreq(pcm.size, 1 / rate)[int(np.argmax(spectrum))])


def decode_mono(path: Path, rate: int = ANALYSIS_SAMPLE_RATE) -> npt.NDArray[np.float32]:
    argv = ["ffmpeg", "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(rate)]
    out = subprocess.run(
        [*argv, "-f", "f32le", "-"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return np.frombuffer(out, dtype="<f4")


def rejected(src: Path, limits: MediaLimits, reason: str, tmp_path: Path) -> str:
    """probe() must pass and process() must refuse with ``reason``."""
    probed = probe(src, limits)
    with pytest.raises(MediaRejected) as caught:
        process(src, probed, tmp_path, limits)
    assert caught.value.reason == reason, caught.value.detail
    return caught.value.detail


# --- every accepted format ----------------------------------------------------------


@pytest.mark.parametrize("name", FORMAT_NAMES)
@pytest.mark.parametrize("output", ["playback", "preview"])
def test_outputs_are_aac_lc_44k1_stereo_m4a(
    name: str, output: str, processed: Callable[[str], Processed]
) -> None:
    path: Path = getattr(processed(name).media, output)
    info = ffprobe_json(path)
    stream = audio_stream(info)
    assert path.suffix == ".m4a"
    assert info["format"]["format_name"] == "mov,mp4,m4a,3gp,3g2,mj2"
    assert info["format"]["tags"]["major_brand"] == "M4A "
    assert (stream["codec_name"], stream["profile"]) == ("aac", "LC")
    assert (int(stream["sample_rate"]), stream["channels"]) == (44100, 2)
    assert 110_000 <= int(stream["bit_rate"]) <= 140_000
    assert float(info["format"]["duration"]) == pytest.approx(SOURCE_SECONDS, abs=0.1)
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_source_metadata_is_stripped(
    name: str, encoded: dict[str, Path], processed: Callable[[str], Processed]
) -> None:
    fmt = next(f for f in FORMATS if f.name == name)
    source_text = json.dumps(ffprobe_json(encoded[name]))
    if fmt.tagged:  # control: the tags really are in the source
        assert all(value in source_text for value in TAGS.values())
    media = processed(name).media
    for path in (media.playback, media.preview):
        text, raw = json.dumps(ffprobe_json(path)), path.read_bytes()
        for value in TAGS.values():
            assert value not in text
            assert value.encode() not in raw
        assert b"Lavf" not in raw  # no encoder tag either (+bitexact)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_decoded_duration_and_loudness(name: str, processed: Callable[[str], Processed]) -> None:
    fmt = next(f for f in FORMATS if f.name == name)
    media = processed(name).media
    assert media.duration_s == pytest.approx(SOURCE_SECONDS, abs=0.06)
    # 1 kHz sine at -20 dBFS on both channels: -20 LUFS and -20 dBTP (EBU Tech 3341).
    # The mono MP3 is upmixed at -3 dB per channel (constant power): -23 LUFS, -23 dBTP.
    tolerance = 0.3 if fmt.lossless else 1.0
    expected = TONE_DBFS - (3.0 if name == "mp3_mpeg2_mono" else 0.0)
    assert media.loudness.integrated_lufs == pytest.approx(expected, abs=tolerance)
    assert media.loudness.true_peak_dbtp == pytest.approx(expected, abs=tolerance)
    assert 0.0 <= media.loudness.lra < 1.0


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_analysis_pcm_is_the_mono_signal(name: str, processed: Callable[[str], Processed]) -> None:
    pcm = load_analysis_pcm(processed(name).media.analysis_pcm)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert pcm.size / ANALYSIS_SAMPLE_RATE == pytest.approx(SOURCE_SECONDS, abs=0.06)
    middle = pcm[ANALYSIS_SAMPLE_RATE : 3 * ANALYSIS_SAMPLE_RATE]
    assert dominant_hz(middle, ANALYSIS_SAMPLE_RATE) == pytest.approx(TONE_HZ, abs=5)
    # Identical channels fold to mono at +3 dB (the resampler's constant-power matrix).
    folded = 10 ** (TONE_DBFS / 20) * (1.0 if name == "mp3_mpeg2_mono" else np.sqrt(2))
    assert float(np.abs(middle).max()) == pytest.approx(folded, rel=0.1)


@pytest.mark.parametrize("name", ["wav", "opus"])
def test_waveform_json(name: str, processed: Callable[[str], Processed]) -> None:
    media = processed(name).media
    doc = json.loads(media.waveform.read_text())
    n_samples = load_analysis_pcm(media.analysis_pcm).size
    spp = doc["samples_per_peak"]
    assert doc["version"] == 1 and doc["channels"] == 1 and doc["bits"] == 8
    assert doc["sample_rate"] == ANALYSIS_SAMPLE_RATE
    assert doc["length"] * spp - spp < n_samples <= doc["length"] * spp
    assert len(doc["peaks"]) == 2 * doc["length"]
    mins, maxs = np.array(doc["peaks"][0::2]), np.array(doc["peaks"][1::2])
    assert np.all(mins <= maxs) and mins.min() >= -128 and maxs.max() <= 127
    folded = 10 ** (TONE_DBFS / 20) * np.sqrt(2) * 127
    assert np.median(maxs[5:-5]) == pytest.approx(folded, abs=1.5)
    assert np.median(mins[5:-5]) == pytest.approx(-folded, abs=1.5)


def test_outputs_stay_inside_the_workdir(
    encoded: dict[str, Path], tmp_path: Path, limits: MediaLimits
) -> None:
    src = encoded["ogg_vorbis"]
    before = sorted(src.parent.iterdir())
    workdir = tmp_path / "job"
    workdir.mkdir()
    media = process(src, probe(src, limits), workdir, limits)
    for path in (media.playback, media.preview, media.analysis_pcm, media.waveform):
        assert path.is_file() and workdir in path.parents
    assert sorted(src.parent.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]


def test_source_named_like_an_output_is_untouched(
    encoded: dict[str, Path], tmp_path: Path, limits: MediaLimits
) -> None:
    src = tmp_path / "playback.m4a"
    src.write_bytes(encoded["m4a"].read_bytes())
    media = process(src, probe(src, limits), tmp_path, limits)
    assert src.read_bytes() == encoded["m4a"].read_bytes()
    assert media.playback != src


# --- the preview clip ------------------------------------------------------------


def test_preview_is_30_s_from_a_quarter_in(tmp_path: Path, limits: MediaLimits) -> None:
    steps = [300.0 + 100 * i for i in range(8)]  # 8 x 5 s = 40 s, one pitch per step
    samples = np.concatenate([tone(5, freq=f, channels=2) for f in steps])
    src = write_wav(tmp_path / "steps.wav", samples)
    media = process(src, probe(src, limits), tmp_path, limits)
    assert media.preview_start_s == 10.0  # min(40 / 4, 40 - 30)
    info = ffprobe_json(media.preview)
    assert float(info["format"]["duration"]) == pytest.approx(PREVIEW_SECONDS, abs=0.1)
    clip = decode_mono(media.preview)
    second = clip[ANALYSIS_SAMPLE_RATE : 2 * ANALYSIS_SAMPLE_RATE]  # 11-12 s of the source
    assert dominant_hz(second, ANALYSIS_SAMPLE_RATE) == pytest.approx(500.0, abs=5)
    last = clip[-3 * ANALYSIS_SAMPLE_RATE : -2 * ANALYSIS_SAMPLE_RATE]  # 37-38 s
    assert dominant_hz(last, ANALYSIS_SAMPLE_RATE) == pytest.approx(1000.0, abs=5)
    assert np.abs(clip[-200:]).max() < 0.01  # faded out at the cut


# --- refusals discovered while decoding ------------------------------------------


def test_header_that_lies_about_hours_of_audio(tmp_path: Path) -> None:
    """A 1-hour FLAC whose STREAMINFO claims 7 s: decoding stops just past the maximum."""
    bomb = tmp_path / "liar.flac"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=8000:cl=mono",
        "-t",
        "3600",
        "-c:a",
        "flac",
        "-frame_size",
        "65535",
        "-compression_level",
        "0",
        bomb,
    )
    data = bytearray(bomb.read_bytes())
    fields = int.from_bytes(data[18:26], "big")  # rate | channels | bits | total samples
    assert fields & (2**36 - 1) == 3600 * 8000
    data[18:26] = ((fields & ~(2**36 - 1)) | 7 * 8000).to_bytes(8, "big")
    bomb.write_bytes(data)
    assert len(data) < 64 * 1024

    limits = MediaLimits(max_duration_s=20)
    assert probe(bomb, limits).duration_s == pytest.approx(7.0)
    with pytest.raises(MediaRejected) as caught:
        process(bomb, probe(bomb, limits), tmp_path, limits)
    assert caught.value.reason == DURATION_CHECK_FAILED
    stopped_at = 20 + DECODE_MARGIN_S
    assert caught.value.detail == (
        f"decoding was stopped at {stopped_at:.1f} s, above the 20 s maximum "
        "(the header claimed 7.0 s)"
    )


@pytest.mark.parametrize("suffix", [".mp3", ".flac"])
def test_truncated(suffix: str, encoded: dict[str, Path], tmp_path: Path) -> None:
    whole = encoded["mp3" if suffix == ".mp3" else "flac"].read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole[: len(whole) // 2])
    detail = rejected(cut, MediaLimits(), FORMAT_CHECK_FAILED, tmp_path)
    assert detail.startswith("truncated or corrupt: the header says 7.0 s but only")


def test_corrupt_middle(encoded: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(encoded["mp3"].read_bytes())
    start, end = len(data) // 10, len(data) * 9 // 10
    data[start:end] = np.random.default_rng(11).integers(0, 256, end - start, np.uint8).tobytes()
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(data)
    detail = rejected(corrupt, MediaLimits(), FORMAT_CHECK_FAILED, tmp_path)
    assert "failed to decode" in detail or "truncated or corrupt" in detail


def test_estimated_header_then_too_short(tmp_path: Path) -> None:
    short = tmp_path / "short.mp3"
    ffmpeg("-f", "lavfi", "-i", f"{SINE}:d=3", "-c:a", "libmp3lame", "-write_xing", "0", short)
    detail = rejected(short, MediaLimits(), DURATION_CHECK_FAILED, tmp_path)
    assert detail.startswith("decoded duration 3.0 s is below the 5 s minimum")


def test_file_swapped_after_probe(encoded: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "upload"
    src.write_bytes(encoded["mp3"].read_bytes())
    probed = probe(src, MediaLimits())
    src.write_bytes(encoded["flac"].read_bytes())
    with pytest.raises(MediaRejected) as caught:
        process(src, probed, tmp_path, MediaLimits())
    assert caught.value.reason == FORMAT_CHECK_FAILED
    assert "validated as demuxer 'mp3'" in caught.value.detail


def test_forged_probe_result_cannot_unpin(tmp_path: Path, limits: MediaLimits) -> None:
    playlist = tmp_path / "x.m3u8"
    playlist.write_text("#EXTM3U\n#EXTINF:8,\n/dev/zero\n")
    forged = ProbeResult("hls", "mp3", 8.0, 44100, 2, None, demuxer="hls")
    with pytest.raises(MediaRejected) as caught:
        process(playlist, forged, tmp_path, limits)
    assert "M3U/HLS playlist" in caught.value.detail


def test_mp3_followed_by_playlist_text_never_reads_the_target(
    encoded: dict[str, Path],
    tmp_path: Path,
    limits: MediaLimits,
    watch_opens: Callable[[Path], OpenWatch],
) -> None:
    secret = write_wav(tmp_path / "secret.wav", tone(8, freq=777))
    polyglot = tmp_path / "polyglot.mp3"
    trailer = f"\n#EXTM3U\n#EXTINF:8.0,\n{secret}\n#EXT-X-ENDLIST\n".encode()
    polyglot.write_bytes(encoded["mp3"].read_bytes() + trailer)
    watch = watch_opens(secret)
    media = process(polyglot, probe(polyglot, limits), tmp_path, limits)
    assert watch.events() == 0
    pcm = load_analysis_pcm(media.analysis_pcm)
    assert dominant_hz(pcm[: ANALYSIS_SAMPLE_RATE * 2], ANALYSIS_SAMPLE_RATE) == pytest.approx(
        TONE_HZ, abs=5
    )


# --- failures of the tool itself --------------------------------------------------


def fake_tool(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-ffmpeg"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_ffmpeg_failure_carries_summarised_stderr(
    encoded: dict[str, Path], tmp_path: Path, limits: MediaLimits
) -> None:
    body = "for i in 1 2 3; do echo '[aac @ 0x1f] [error] encoder exploded' >&2; done; exit 1"
    broken = MediaLimits(ffmpeg=fake_tool(tmp_path, body))
    with pytest.raises(MediaProcessingError) as caught:
        process(encoded["wav"], probe(encoded["wav"], limits), tmp_path, broken)
    assert not isinstance(caught.value, MediaRejected)
    expected = "ffmpeg exited with status 1:\n[aac] [error] encoder exploded (x3)"
    assert caught.value.detail == expected


def test_ffmpeg_killed_by_memory_limit(
    encoded: dict[str, Path], tmp_path: Path, limits: MediaLimits
) -> None:
    starved = MediaLimits(memory_limit_bytes=8 * 1024 * 1024)
    with pytest.raises(MediaProcessingError) as caught:
        process(encoded["wav"], probe(encoded["wav"], limits), tmp_path, starved)
    assert caught.value.detail.startswith("ffmpeg ")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_timeout_raises_and_leaves_no_process(tmp_path: Path) -> None:
    src = write_wav(tmp_path / "long.wav", tone(60))
    limits = MediaLimits(timeout_s=0.3)
    probed = probe(src, MediaLimits())
    workdir = tmp_path / "job"
    workdir.mkdir()
    with pytest.raises(MediaTimeout) as caught:
        process(src, probed, workdir, limits)
    assert "exceeded the 0.3 s time limit" in caught.value.detail
    assert _processes_mentioning(str(workdir)) == []


# --- the per-job directory ---------------------------------------------------------


def test_job_workdir_is_private_and_removed(tmp_path: Path) -> None:
    with job_workdir(tmp_path / "jobs") as workdir:
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        (workdir / "file").write_text("x")
    assert not workdir.exists()
    assert list((tmp_path / "jobs").iterdir()) == []


def test_job_workdir_is_removed_when_processing_fails(tmp_path: Path) -> None:
    src = write_wav(tmp_path / "short.wav", tone(6))
    with pytest.raises(MediaRejected), job_workdir(tmp_path / "jobs") as workdir:
        probed = probe(src, MediaLimits())
        process(src, probed, workdir, MediaLimits(max_duration_s=5.5))
    assert not workdir.exists()
    assert list((tmp_path / "jobs").iterdir()) == []
