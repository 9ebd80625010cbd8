"""The analysis signal: mono float32 PCM at a low, fixed rate.

One stream serves both fingerprinting and the waveform peaks, so it is decoded
once (inside the single ffmpeg pass) and read from disk with numpy, never
decoded again. 11025 Hz keeps everything up to 5.5 kHz -- where the landmarks
that identify music live -- at a quarter of the CD rate's cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

#: Sample rate (Hz) of the analysis PCM. Read it from here; do not copy it.
ANALYSIS_SAMPLE_RATE: Final[int] = 11025
#: Raw sample format written by ffmpeg (``-f f32le``).
ANALYSIS_DTYPE: Final = np.dtype("<f4")


def load_analysis_pcm(path: Path) -> npt.NDArray[np.float32]:
    """Load the raw little-endian float32 mono PCM written by :func:`pipelines.process`."""
    size = path.stat().st_size
    if size % ANALYSIS_DTYPE.itemsize:
        raise ValueError(f"{path} is {size} bytes, not a whole number of float32 samples")
    return np.fromfile(path, dtype=ANALYSIS_DTYPE).astype(np.float32, copy=False)


def pcm_duration_s(path: Path) -> float:
    """Duration of an analysis PCM file, from its size alone."""
    return path.stat().st_size / ANALYSIS_DTYPE.itemsize / ANALYSIS_SAMPLE_RATE
