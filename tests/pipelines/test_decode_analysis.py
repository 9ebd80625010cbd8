"""``decode_analysis``: the analysis PCM alone, for audio that is only fingerprinted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import (
    DURATION_CHECK_FAILED,
    FORMAT_CHECK_FAILED,
    MediaLimits,
    MediaRejected,
    decode_analysis,
    load_analysis_pcm,
    probe,
    process,
)
from tests.audio import make_audio


def test_same_signal_as_the_single_pass(tmp_path: Path) -> None:
    src = make_audio(tmp_path / "song.ogg", 7.0)
    limits = MediaLimits()
    probed = probe(src, limits)
    alone = load_analysis_pcm(decode_analysis(src, probed, tmp_path, limits))
    full = load_analysis_pcm(process(src, probed, tmp_path, limits).analysis_pcm)
    assert alone.size == full.size == pytest.approx(7.0 * 11025, abs=600)
    assert np.abs(alone - full).max() < 1e-3
    assert not any(p.name.endswith(".m4a") for p in (tmp_path).rglob("analysis-*/*"))


def test_the_decoded_duration_is_held_to_the_limits(tmp_path: Path) -> None:
    src = make_audio(tmp_path / "long.flac", 9.0)
    probed = probe(src, MediaLimits(max_duration_s=60))
    with pytest.raises(MediaRejected) as refused:
        decode_analysis(src, probed, tmp_path, MediaLimits(max_duration_s=6.0))
    assert refused.value.reason == DURATION_CHECK_FAILED


def test_a_file_swapped_after_probing_is_refused(tmp_path: Path) -> None:
    src = make_audio(tmp_path / "song.wav", 6.0)
    probed = probe(src, MediaLimits())
    make_audio(tmp_path / "other.flac", 6.0).replace(src)
    with pytest.raises(MediaRejected) as refused:
        decode_analysis(src, probed, tmp_path, MediaLimits())
    assert refused.value.reason == FORMAT_CHECK_FAILED
