"""Distinct "tracks" for fingerprint tests: seeded melodies, written and degraded by real ffmpeg.

``tests.audio.make_audio`` is steady tones over noise: two of its files at the same
frequency *are* the same music to a fingerprint. Tests that need many different
tracks use :func:`melody` instead: a random melody over changing chords and a beat,
one seed per track, so that every seed is a different piece.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt

SR = 22050
F32 = npt.NDArray[np.float32]


def melody(seed: int, seconds: float = 24.0, sr: int = SR) -> F32:
    """Music-like mono audio in [-0.8, 0.8]: notes with harmonics, chords every 2 s, a beat."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = np.zeros(n, dtype=np.float64)
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    root = 43 + int(rng.integers(0, 12))

    def note(midi: float, start: int, length: int, amp: float, partials: int) -> None:
        length = min(length, n - start)
        if length <= 0:
            return
        t = np.arange(length) / sr
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        env = np.minimum(t / 0.01, 1.0) * np.exp(-t * rng.uniform(2.0, 5.0))
        for k in range(1, partials + 1):
            if f0 * k < sr / 2:
                out[start:start + length] += (amp / k) * env * np.sin(
                    2 * np.pi * f0 * k * t + rng.uniform(0, 6.28))

    pos = 0
    while pos < n:
        length = int(sr * rng.choice([0.125, 0.25, 0.25, 0.375, 0.5]))
        degree = int(rng.integers(0, 14))
        note(root + 12 + scale[degree % 7] + 12 * (degree // 7), pos, int(length * 1.5), 0.35, 6)
        pos += length
    for start in range(0, n, 2 * sr):
        base = root + scale[int(rng.integers(0, 7))]
        for interval in (0, 4, 7):
            note(base + interval, start, 2 * sr, 0.1, 4)
    beat = int(sr * rng.uniform(0.4, 0.6))
    hit = rng.standard_normal(int(0.03 * sr)) * np.exp(-np.arange(int(0.03 * sr)) / (0.006 * sr))
    for start in range(0, n - hit.size, beat):
        out[start:start + hit.size] += 0.25 * hit
    out *= 0.8 / np.max(np.abs(out))
    return out.astype(np.float32)


def write(pcm: F32, path: Path, *codec: str, sr: int = SR, start_s: float = 0.0,
          seconds: float | None = None, filters: str = "") -> Path:
    """Encode ``pcm`` (optionally an excerpt, through ``filters``) into ``path`` with ffmpeg.

    ``codec`` are ffmpeg output options, e.g. ``"-c:a", "libmp3lame", "-b:a", "64k"``;
    without them the suffix decides (FLAC for ``.flac``, 16-bit PCM for ``.wav``).
    """
    cut = pcm[int(start_s * sr):] if seconds is None else \
        pcm[int(start_s * sr):int((start_s + seconds) * sr)]
    raw = path.with_suffix(".f32")
    cut.astype("<f4").tofile(raw)
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "f32le", "-ar", str(sr),
               "-ac", "1", "-i", str(raw)]
    if filters:
        command += ["-af", filters]
    subprocess.run([*command, *codec, str(path)], check=True, timeout=60)
    raw.unlink()
    return path


def mp3_64k_clip(pcm: F32, path: Path, start_s: float, seconds: float = 10.0) -> Path:
    """A degraded excerpt: ``seconds`` from ``start_s``, stereo MP3 at 64 kbps, 3 dB quieter."""
    return write(pcm, path, "-ac", "2", "-c:a", "libmp3lame", "-b:a", "64k", start_s=start_s,
                 seconds=seconds, filters="volume=-3dB")
