"""probe(): every accepted format is described correctly; every refusal names its reason."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipelines import (
    DURATION_CHECK_FAILED,
    FILE_SIZE_CHECK_FAILED,
    FORMAT_CHECK_FAILED,
    MediaLimits,
    MediaRejected,
    ProbeResult,
    probe,
)
from tests.pipelines.conftest import (
    FORMAT_NAMES,
    FORMATS,
    SOURCE_SECONDS,
    OpenWatch,
    ffmpeg,
    tone,
    write_wav,
)

SINE = "sine=f=440:r=44100"


def refused(path: Path, limits: MediaLimits, reason: str) -> str:
    """Probe ``path``, require a refusal with ``reason``, return its detail."""
    with pytest.raises(MediaRejected) as caught:
        probe(path, limits)
    assert caught.value.reason == reason, caught.value.detail
    assert caught.value.detail
    return caught.value.detail


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_accepted_formats_are_described(
    name: str, encoded: dict[str, Path], limits: MediaLimits
) -> None:
    fmt = next(f for f in FORMATS if f.name == name)
    result = probe(encoded[name], limits)
    assert result.container == fmt.container
    assert result.codec == fmt.codec
    expected_rate = {"opus": 48000, "mp3_mpeg2_mono": 22050}.get(name, 44100)
    assert result.sample_rate == expected_rate
    assert result.channels == (1 if name == "mp3_mpeg2_mono" else 2)
    tolerance = 0.5 if result.duration_estimated else 0.1
    assert result.duration_s == pytest.approx(SOURCE_SECONDS, abs=tolerance)
    assert result.bit_rate is None or result.bit_rate > 0
    assert result.duration_estimated == (name == "aac_adts")


def test_cover_art_is_allowed(tmp_path: Path, limits: MediaLimits) -> None:
    picture = tmp_path / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=red:s=64x64", "-frames:v", "1", picture)
    m4a, mp3 = tmp_path / "with-cover.m4a", tmp_path / "with-cover.mp3"
    for out, codec in ((m4a, "aac"), (mp3, "libmp3lame")):
        ffmpeg(
            "-f",
            "lavfi",
            "-i",
            f"{SINE}:d=6",
            "-i",
            picture,
            "-map",
            "0:a",
            "-map",
            "1:v",
            "-c:a",
            codec,
            "-c:v",
            "png",
            "-disposition:v",
            "attached_pic",
            out,
        )
        assert probe(out, limits).codec in {"aac", "mp3"}


def test_empty_file(tmp_path: Path, limits: MediaLimits) -> None:
    empty = tmp_path / "empty.mp3"
    empty.touch()
    assert "empty" in refused(empty, limits, FILE_SIZE_CHECK_FAILED)


def test_oversized_file(encoded: dict[str, Path]) -> None:
    small = MediaLimits(max_file_size_bytes=10_000)
    detail = refused(encoded["wav"], small, FILE_SIZE_CHECK_FAILED)
    assert "10000 byte limit" in detail


def test_image(tmp_path: Path, limits: MediaLimits) -> None:
    image = tmp_path / "photo.mp3"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=64x64",
        "-frames:v",
        "1",
        "-f",
        "image2",
        "-c:v",
        "png",
        image,
    )
    assert "PNG image" in refused(image, limits, FORMAT_CHECK_FAILED)


def test_video_with_sound(tmp_path: Path, limits: MediaLimits) -> None:
    video = tmp_path / "clip.m4a"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=64x64:d=6",
        "-f",
        "lavfi",
        "-i",
        f"{SINE}:d=6",
        "-c:v",
        "mpeg4",
        "-c:a",
        "aac",
        "-f",
        "mp4",
        video,
    )
    assert "video stream" in refused(video, limits, FORMAT_CHECK_FAILED)


def test_random_bytes(tmp_path: Path, limits: MediaLimits) -> None:
    noise = tmp_path / "noise.wav"
    noise.write_bytes(np.random.default_rng(7).integers(0, 256, 200_000, np.uint8).tobytes())
    refused(noise, limits, FORMAT_CHECK_FAILED)


@pytest.mark.parametrize("magic", [b"fLaC", b"OggS\x00\x02" + bytes(21) + b"\x01\x1e\x01vorbis"])
def test_valid_magic_then_garbage(tmp_path: Path, limits: MediaLimits, magic: bytes) -> None:
    fake = tmp_path / "fake.audio"
    fake.write_bytes(magic + np.random.default_rng(3).integers(0, 256, 50_000, np.uint8).tobytes())
    refused(fake, limits, FORMAT_CHECK_FAILED)


def test_truncated_wav(encoded: dict[str, Path], tmp_path: Path, limits: MediaLimits) -> None:
    cut = tmp_path / "cut.wav"
    data = encoded["wav"].read_bytes()
    cut.write_bytes(data[: len(data) * 9 // 10])
    assert "truncated" in refused(cut, limits, FORMAT_CHECK_FAILED)


def test_too_short(tmp_path: Path, limits: MediaLimits) -> None:
    short = write_wav(tmp_path / "short.wav", tone(3.2))
    assert refused(short, limits, DURATION_CHECK_FAILED) == (
        "header duration 3.2 s is below the 5 s minimum"
    )


def test_tiny_file_that_decodes_to_hours(tmp_path: Path, limits: MediaLimits) -> None:
    bomb = tmp_path / "bomb.flac"
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
    assert bomb.stat().st_size < 64 * 1024
    detail = refused(bomb, limits, DURATION_CHECK_FAILED)
    assert detail == "header duration 3600.0 s is above the 600 s maximum"


@pytest.mark.parametrize(
    ("suffix", "args", "mentions"),
    [
        (".wav", ["-c:a", "libmp3lame", "-f", "wav"], "codec 'mp3' is not accepted in WAV"),
        (".m4a", ["-c:a", "alac", "-f", "ipod"], "codec 'alac' is not accepted in MP4/M4A"),
        (".ogg", ["-c:a", "flac", "-f", "ogg"], "neither Vorbis nor Opus"),
        (".aiff", ["-c:a", "pcm_s16le", "-f", "aiff"], None),
    ],
)
def test_codec_must_match_container(
    tmp_path: Path, limits: MediaLimits, suffix: str, args: list[str], mentions: str | None
) -> None:
    path = tmp_path / f"odd{suffix}"
    ffmpeg("-f", "lavfi", "-i", f"{SINE}:d=6", *args, path)
    if mentions is None:  # AIFF-C 'sowt' (little-endian PCM) is a legitimate AIFF
        assert probe(path, limits).codec == "pcm_s16le"
    else:
        assert mentions in refused(path, limits, FORMAT_CHECK_FAILED)


def test_sample_rate_out_of_bounds(tmp_path: Path, limits: MediaLimits) -> None:
    low = write_wav(tmp_path / "low.wav", tone(6, freq=300, rate=4000), rate=4000)
    assert "sample rate 4000 Hz" in refused(low, limits, FORMAT_CHECK_FAILED)


def test_too_many_channels(tmp_path: Path, limits: MediaLimits) -> None:
    wide = write_wav(tmp_path / "wide.wav", tone(6, channels=10))
    assert "10 channels" in refused(wide, limits, FORMAT_CHECK_FAILED)


def test_two_audio_streams(tmp_path: Path, limits: MediaLimits) -> None:
    dual = tmp_path / "dual.m4a"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"{SINE}:d=6",
        "-f",
        "lavfi",
        "-i",
        f"{SINE}:d=6",
        "-map",
        "0:a",
        "-map",
        "1:a",
        "-c:a",
        "aac",
        dual,
    )
    assert "exactly one audio stream" in refused(dual, limits, FORMAT_CHECK_FAILED)


def test_mp3_without_xing_header_has_an_estimated_duration(
    tmp_path: Path, limits: MediaLimits
) -> None:
    bare = tmp_path / "bare.mp3"
    ffmpeg("-f", "lavfi", "-i", f"{SINE}:d=6", "-c:a", "libmp3lame", "-write_xing", "0", bare)
    result = probe(bare, limits)
    assert result.duration_estimated
    assert result.duration_s == pytest.approx(6.0, abs=0.3)


# --- references to other files are never followed ------------------------------------


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A perfectly valid audio file that hostile uploads try to make ffmpeg read."""
    return write_wav(tmp_path / "secret.wav", tone(8, freq=777))


def hls_playlist(path: Path, target: Path) -> Path:
    path.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:8\n"
        f"#EXTINF:8.0,\n{target}\n#EXT-X-ENDLIST\n"
    )
    return path


def concat_list(path: Path, target: Path) -> Path:
    path.write_text(f"ffconcat version 1.0\nfile '{target.name}'\nduration 8.0\n")
    return path


PLAYLISTS = {"hls": hls_playlist, "ffconcat": concat_list}


@pytest.mark.parametrize("kind", sorted(PLAYLISTS))
def test_unpinned_ffprobe_would_read_the_secret(
    kind: str, tmp_path: Path, secret: Path, watch_opens: Callable[[Path], OpenWatch]
) -> None:
    """Control: shows the danger is real here and that the watch sees it."""
    playlist = PLAYLISTS[kind](tmp_path / "track.mp3", secret)
    watch = watch_opens(secret)
    subprocess.run(["ffprobe", "-v", "quiet", "-show_streams", str(playlist)], check=False)
    assert watch.events() > 0


@pytest.mark.parametrize("kind", sorted(PLAYLISTS))
@pytest.mark.parametrize("name", ["track.mp3", "track.m3u8", "list.ffconcat", "track.wav"])
def test_playlists_are_refused_without_reading_their_target(
    kind: str,
    name: str,
    tmp_path: Path,
    secret: Path,
    limits: MediaLimits,
    watch_opens: Callable[[Path], OpenWatch],
) -> None:
    playlist = PLAYLISTS[kind](tmp_path / name, secret)
    watch = watch_opens(secret)
    detail = refused(playlist, limits, FORMAT_CHECK_FAILED)
    assert ("M3U/HLS playlist" if kind == "hls" else "ffconcat list") in detail
    assert watch.events() == 0
    # The detail is the same whether the target exists or not: nothing about it leaked.
    secret.unlink()
    assert refused(playlist, limits, FORMAT_CHECK_FAILED) == detail


def test_probe_result_is_hashable_and_frozen(encoded: dict[str, Path], limits: MediaLimits) -> None:
    result = probe(encoded["flac"], limits)
    with pytest.raises(AttributeError):
        result.codec = "mp3"  # type: ignore[misc]
    assert isinstance(hash(result), int)
    assert isinstance(result, ProbeResult)
