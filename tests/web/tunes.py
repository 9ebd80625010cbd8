"""Distinct short tracks for tests that push several sounds for one creator."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from tests.audio import CODECS


def make_tune(path: Path, seconds: float = 6.0, *, seed: int) -> Path:
    """A short piece of its own: a seeded random melody over a beat, in ``path``'s format.

    ``tests.audio.make_audio`` is steady tones over the same beat, which the fingerprint
    stage rightly takes for one piece of music; tests that push several sounds for one
    creator need tracks that really differ. Written as WAV, then encoded by real ffmpeg.
    """
    rate = 44100
    rng = np.random.default_rng(seed)
    samples = int(seconds * rate)
    out = np.zeros(samples)
    step = int(rate * rng.uniform(0.18, 0.3))
    for start in range(0, samples, step):
        t = np.arange(min(step * 2, samples - start)) / rate
        pitch = 220.0 * 2 ** (int(rng.integers(0, 24)) / 12)
        envelope = np.exp(-t * rng.uniform(3, 8))
        out[start:start + t.size] += 0.3 * envelope * (np.sin(2 * np.pi * pitch * t)
                                                       + 0.4 * np.sin(4 * np.pi * pitch * t))
        if rng.random() < 0.35:  # a drum hit
            hit = min(int(rate * 0.05), samples - start)
            out[start:start + hit] += rng.normal(0, 0.25, hit) * np.linspace(1, 0, hit)
    pcm = (np.clip(out, -1, 1) * 32000).astype("<i2")
    wav = path.with_suffix(".tune.wav")
    with wave.open(str(wav), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    if path.suffix == ".wav":
        wav.replace(path)
        return path
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav),
                    "-ac", "2", *CODECS[path.suffix], str(path)], check=True, timeout=60)
    wav.unlink()
    return path
