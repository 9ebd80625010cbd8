"""Pure parts: waveform peaks from numpy arrays, the EBU R128 summary parser."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import ANALYSIS_SAMPLE_RATE, Loudness
from pipelines.loudness import TRUE_PEAK_FLOOR_DBTP, parse_ebur128_summary
from pipelines.waveform import MAX_PEAKS, MIN_SAMPLES_PER_PEAK, compute_peaks, samples_per_peak
from pipelines.waveform import waveform_document as document


def test_peaks_are_min_max_pairs_scaled_to_8_bits() -> None:
    pcm = np.array([0.0, 0.5, -0.25, 1.0, -1.0, 0.1, 2.0], dtype=np.float32)
    assert compute_peaks(pcm, 3).tolist() == [-32, 64, -127, 127, 0, 127]


def test_window_grows_with_length_and_caps_the_count() -> None:
    assert samples_per_peak(10) == MIN_SAMPLES_PER_PEAK
    ten_minutes = 600 * ANALYSIS_SAMPLE_RATE
    window = samples_per_peak(ten_minutes)
    assert -(-ten_minutes // window) <= MAX_PEAKS
    assert -(-ten_minutes // (window - 1)) > MAX_PEAKS


def test_document_of_silence_and_empty_input() -> None:
    silent = document(np.zeros(ANALYSIS_SAMPLE_RATE * 6, dtype=np.float32))
    assert set(silent["peaks"]) == {0}
    assert silent["duration_s"] == 6.0
    empty = document(np.zeros(0, dtype=np.float32))
    assert (empty["length"], empty["peaks"]) == (0, [])


SUMMARY = """\
[Parsed_ebur128_1 @ 0x1] [info] Summary:

  Integrated loudness:
    I:         -70.0 LUFS
    Threshold:   0.0 LUFS

  Loudness range:
    LRA:         0.0 LU
    Threshold:   0.0 LUFS
    LRA low:     0.0 LUFS
    LRA high:    0.0 LUFS

  True peak:
    Peak:       -inf dBFS
[info] Stream mapping:
[Parsed_ebur128_1 @ 0x2] [info] Summary:

  Integrated loudness:
    I:         -14.2 LUFS
    Threshold: -24.6 LUFS

  Loudness range:
    LRA:         6.3 LU
    Threshold: -34.5 LUFS
    LRA low:   -19.0 LUFS
    LRA high:  -12.7 LUFS

  True peak:
    Peak:        0.4 dBFS
[aac @ 0x3] [info] Qavg: 62288.250
"""


def test_the_last_summary_wins() -> None:
    assert parse_ebur128_summary(SUMMARY.splitlines()) == Loudness(-14.2, 0.4, 6.3)


def test_silence_has_a_finite_peak_floor() -> None:
    first = SUMMARY.split("[info] Stream mapping")[0]
    loud = parse_ebur128_summary(first.splitlines())
    assert loud == Loudness(-70.0, TRUE_PEAK_FLOOR_DBTP, 0.0)


@pytest.mark.parametrize("lines", [[], ["[info] nothing"], SUMMARY.splitlines()[:8]])
def test_missing_or_incomplete_summary(lines: list[str]) -> None:
    assert parse_ebur128_summary(lines) is None
