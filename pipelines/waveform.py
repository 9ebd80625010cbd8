"""Waveform peaks for drawing, computed from the analysis PCM with numpy.

No second decode: the analysis PCM that the single ffmpeg pass already wrote
is reduced to min/max pairs. The resolution adapts to the length (at most
``MAX_PEAKS`` pairs, at least ``MIN_SAMPLES_PER_PEAK`` samples per pair) so a
10-minute track and a 6-second sound both give a file of a few kB to 20 kB that
draws well at any common width.

JSON layout (``version`` 1)::

    {"version": 1, "channels": 1, "sample_rate": 11025, "samples_per_peak": 64,
     "bits": 8, "length": 1034, "duration_s": 6.0,
     "peaks": [min0, max0, min1, max1, ...]}

``peaks`` interleaves each window's minimum and maximum as integers scaled to
``bits`` (-128..127 for 8 bits, full scale = 127), the layout of the BBC's
audiowaveform format, so existing waveform widgets can read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pipelines.analysis import ANALYSIS_SAMPLE_RATE

WAVEFORM_VERSION: Final = 1
MAX_PEAKS: Final = 2000
MIN_SAMPLES_PER_PEAK: Final = 64
BITS: Final = 8
_SCALE: Final = 2 ** (BITS - 1) - 1


def samples_per_peak(n_samples: int) -> int:
    """Window size giving at most ``MAX_PEAKS`` windows over ``n_samples``."""
    return max(MIN_SAMPLES_PER_PEAK, -(-n_samples // MAX_PEAKS))


def compute_peaks(pcm: npt.NDArray[np.float32], window: int) -> npt.NDArray[np.int8]:
    """Interleaved (min, max) per ``window`` samples, scaled to signed 8-bit.

    The last, partial window is padded with zeros (silence), which changes
    neither its minimum nor its maximum unless the window is entirely one-sided,
    where zero is the honest baseline anyway.
    """
    if pcm.size == 0:
        return np.zeros(0, dtype=np.int8)
    n_windows = -(-pcm.size // window)
    padded = np.zeros(n_windows * window, dtype=np.float32)
    padded[: pcm.size] = np.clip(pcm, -1.0, 1.0)
    frames = padded.reshape(n_windows, window)
    pairs = np.stack([frames.min(axis=1), frames.max(axis=1)], axis=1).reshape(-1)
    scaled: npt.NDArray[np.int8] = np.rint(pairs * _SCALE).astype(np.int8)
    return scaled


def waveform_document(pcm: npt.NDArray[np.float32]) -> dict[str, Any]:
    """The JSON-ready waveform description of ``pcm`` (analysis rate, mono)."""
    window = samples_per_peak(pcm.size)
    peaks = compute_peaks(pcm, window)
    return {
        "version": WAVEFORM_VERSION,
        "channels": 1,
        "sample_rate": ANALYSIS_SAMPLE_RATE,
        "samples_per_peak": window,
        "bits": BITS,
        "length": peaks.size // 2,
        "duration_s": round(pcm.size / ANALYSIS_SAMPLE_RATE, 3),
        "peaks": peaks.tolist(),
    }


def write_waveform(pcm: npt.NDArray[np.float32], path: Path) -> Path:
    """Write the waveform JSON for ``pcm`` to ``path`` (compact separators)."""
    path.write_text(json.dumps(waveform_document(pcm), separators=(",", ":")), encoding="utf-8")
    return path
