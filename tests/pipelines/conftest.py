"""Fixtures for the media pipeline: audio generated on the spot with numpy and real ffmpeg.

Sources are short (7 s) and encoded once per session into every accepted
format, each tagged with metadata the outputs must not carry. Processing
results are cached per format for the session so many assertions share one
ffmpeg run.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pipelines import MediaLimits, ProbeResult, ProcessedMedia, probe, process

SOURCE_SECONDS = 7.0
TONE_HZ = 1000.0
TONE_DBFS = -20.0
TAGS = {"title": "Secret Title 7731", "artist": "Secret Artist 4409", "comment": "Secret Note 1187"}


@dataclass(frozen=True)
class Format:
    """One accepted input format: how to encode it, what probe must report."""

    name: str
    suffix: str
    args: tuple[str, ...]
    container: str
    codec: str
    lossless: bool
    tagged: bool = True


FORMATS = [
    Format("mp3", ".mp3", ("-c:a", "libmp3lame", "-b:a", "192k"), "mp3", "mp3", False),
    Format(
        "mp3_mpeg2_mono",
        ".mp3",
        # Explicit fold: the mono file carries the -20 dBFS tone at -20 dBFS.
        ("-af", "pan=mono|c0=0.5*c0+0.5*c1", "-c:a", "libmp3lame", "-b:a", "64k", "-ar", "22050"),
        "mp3",
        "mp3",
        False,
    ),
    Format(
        "aac_adts",
        ".aac",
        ("-c:a", "aac", "-b:a", "192k", "-f", "adts"),
        "aac",
        "aac",
        False,
        tagged=False,
    ),
    Format("m4a", ".m4a", ("-c:a", "aac", "-b:a", "192k"), "mov,mp4,m4a,3gp,3g2,mj2", "aac", False),
    Format("wav", ".wav", ("-c:a", "pcm_s16le"), "wav", "pcm_s16le", True),
    Format("wav_float", ".wav", ("-c:a", "pcm_f32le"), "wav", "pcm_f32le", True),
    Format("flac", ".flac", ("-c:a", "flac"), "flac", "flac", True),
    Format("ogg_vorbis", ".ogg", ("-c:a", "libvorbis", "-q:a", "6"), "ogg", "vorbis", False),
    Format("opus", ".opus", ("-c:a", "libopus", "-b:a", "128k"), "ogg", "opus", False),
    Format("aiff", ".aiff", ("-c:a", "pcm_s16be", "-write_id3v2", "1"), "aiff", "pcm_s16be", True),
]
FORMAT_NAMES = [f.name for f in FORMATS]


def ffmpeg(*args: str | Path) -> None:
    """Run the real ffmpeg quietly, failing the test on any error."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)],
        check=True,
        timeout=120,
    )


def ffprobe_json(path: Path) -> dict[str, Any]:
    """Everything ffprobe can say about ``path`` (format, streams, tags)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    info: dict[str, Any] = json.loads(out)
    return info


def tone(
    seconds: float,
    *,
    freq: float = TONE_HZ,
    dbfs: float = TONE_DBFS,
    rate: int = 44100,
    channels: int = 2,
) -> npt.NDArray[np.float64]:
    """A sine of peak level ``dbfs``, shape (samples, channels)."""
    t = np.arange(round(seconds * rate)) / rate
    mono = 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t)
    return np.repeat(mono[:, None], channels, axis=1)


def write_wav(path: Path, samples: npt.NDArray[np.float64], rate: int = 44100) -> Path:
    """16-bit PCM WAV from float samples in [-1, 1], shape (n,) or (n, channels)."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    pcm = np.clip(np.rint(frames * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


def encode(src: Path, dst: Path, fmt: Format) -> Path:
    """Encode ``src`` into ``fmt``, tagging it when the format carries tags."""
    tags: list[str] = []
    if fmt.tagged:
        for key, value in TAGS.items():
            tags += ["-metadata", f"{key}={value}"]
    ffmpeg("-i", src, *fmt.args, *tags, dst)
    return dst


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def source_wav(media_dir: Path) -> Path:
    """7 s stereo 1 kHz sine at -20 dBFS: -20 LUFS, -20 dBTP by EBU Tech 3341."""
    return write_wav(media_dir / "source.wav", tone(SOURCE_SECONDS))


@pytest.fixture(scope="session")
def encoded(source_wav: Path, media_dir: Path) -> dict[str, Path]:
    """The source encoded into every accepted format."""
    return {
        fmt.name: encode(source_wav, media_dir / f"{fmt.name}{fmt.suffix}", fmt) for fmt in FORMATS
    }


@dataclass(frozen=True)
class Processed:
    probed: ProbeResult
    media: ProcessedMedia


@pytest.fixture(scope="session")
def processed(
    encoded: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Processed]:
    """probe() + process() per format, run once per session on first use."""
    cache: dict[str, Processed] = {}
    limits = MediaLimits()

    def get(name: str) -> Processed:
        if name not in cache:
            probed = probe(encoded[name], limits)
            workdir = tmp_path_factory.mktemp(f"work-{name}")
            cache[name] = Processed(probed, process(encoded[name], probed, workdir, limits))
        return cache[name]

    return get


@pytest.fixture
def limits() -> MediaLimits:
    return MediaLimits()


# --- watching a file for opens -------------------------------------------------------

_IN_ACCESS = 0x00000001
_IN_OPEN = 0x00000020
_EVENT_HEADER = 16


class OpenWatch:
    """Counts opens/reads of one file through Linux inotify.

    Used to prove that a playlist's target is never touched: inotify reports
    any open by any process, including ffmpeg and ffprobe children.
    """

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        watch = libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_OPEN | _IN_ACCESS)
        if watch < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch failed for {path}")

    def events(self) -> int:
        """Number of open/access events since the last call."""
        count = 0
        while True:
            try:
                buffer = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            offset = 0
            while offset < len(buffer):
                name_len = int.from_bytes(buffer[offset + 12 : offset + 16], "little")
                offset += _EVENT_HEADER + name_len
                count += 1

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def watch_opens() -> Iterator[Callable[[Path], OpenWatch]]:
    watches: list[OpenWatch] = []

    def start(path: Path) -> OpenWatch:
        watches.append(OpenWatch(path))
        return watches[-1]

    yield start
    for watch in watches:
        watch.close()
