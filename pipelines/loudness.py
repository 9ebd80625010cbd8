"""EBU R128 loudness read from ffmpeg's ``ebur128`` filter summary.

The filter sits inside the single decode pass (it passes audio through
unchanged), so loudness costs no extra decode. It prints its summary when the
filter graph is torn down; ffmpeg may build and discard a graph once while
negotiating formats, which prints an empty summary first, so the *last*
summary is the one that describes the audio.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: Digital silence has a true peak of -inf dBTP; it is stored as this floor
#: (below the noise floor of 24-bit audio) so the figure stays a finite number.
TRUE_PEAK_FLOOR_DBTP: Final = -144.0

_NUMBER = r"(-?\d+(?:\.\d+)?|-?inf|nan)"
_FIELDS: Final = {
    "integrated": re.compile(rf"^\s*I:\s+{_NUMBER}\s+LUFS"),
    "lra": re.compile(rf"^\s*LRA:\s+{_NUMBER}\s+LU\b"),
    "peak": re.compile(rf"^\s*Peak:\s+{_NUMBER}\s+dBFS"),
}


@dataclass(frozen=True)
class Loudness:
    """EBU R128 integrated loudness, true peak and loudness range."""

    integrated_lufs: float
    true_peak_dbtp: float
    lra: float


def parse_ebur128_summary(lines: Sequence[str]) -> Loudness | None:
    """Parse the last ``Summary:`` block in ffmpeg's stderr, or None if absent."""
    starts = [i for i, line in enumerate(lines) if line.rstrip().endswith("Summary:")]
    if not starts:
        return None
    values: dict[str, float] = {}
    for line in lines[starts[-1] + 1 :]:
        for name, pattern in _FIELDS.items():
            match = pattern.match(line)
            if match and name not in values:
                values[name] = float(match.group(1))
    if len(values) != len(_FIELDS):
        return None
    return Loudness(
        integrated_lufs=values["integrated"],
        true_peak_dbtp=max(values["peak"], TRUE_PEAK_FLOOR_DBTP),
        lra=values["lra"],
    )
