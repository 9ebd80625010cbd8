"""Fingerprint engine on generated music: clips found, strangers rejected, degradations survived.

The "tracks" are synthesised deterministically (melodies of harmonic notes over
chords and noise-burst beats, one random seed each), and degradations go
through real ffmpeg encoders.  A small index of four 30 s tracks is built once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from pipelines.fingerprint import (
    ENGINE_SAMPLE_RATE,
    HASH_LIMIT,
    SCORE_THRESHOLD,
    Extractor,
    Fingerprint,
    InMemoryIndex,
    InvalidAudioError,
    Match,
    extract,
    match,
)

SR = 22050
TRACK_SECONDS = 30.0
F32 = npt.NDArray[np.float32]


def synth_track(seed: int, seconds: float = TRACK_SECONDS, sr: int = SR) -> F32:
    """Music-like audio: a melody, a chord pad that changes every 2 s, a beat."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = np.zeros(n, dtype=np.float64)
    scale = np.array([0, 2, 3, 5, 7, 8, 10])
    root = 45 + int(rng.integers(0, 12))  # MIDI note

    def note(midi: float, start: int, length: int, amp: float, partials: int) -> None:
        length = min(length, n - start)
        if length <= 0:
            return
        t = np.arange(length) / sr
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        env = np.minimum(t / 0.01, 1.0) * np.exp(-t * rng.uniform(2.0, 6.0))
        tone = sum(
            np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k**1.2
            for k in range(1, partials + 1)
            if f0 * k < sr / 2
        )
        out[start : start + length] += amp * env * tone

    pos = 0
    while pos < n:  # melody
        length = int(sr * rng.choice([0.125, 0.25, 0.25, 0.375, 0.5]))
        degree = int(rng.integers(0, 14))
        midi = root + 12 + scale[degree % 7] + 12 * (degree // 7)
        note(midi, pos, int(length * 1.5), 0.35, 6)
        pos += length
    for start in range(0, n, 2 * sr):  # chords
        base = root + scale[int(rng.integers(0, 7))]
        for interval in (0, 3 + int(rng.integers(0, 2)), 7):
            note(base + interval, start, 2 * sr, 0.12, 4)
    beat = int(sr * rng.uniform(0.4, 0.6))
    burst = rng.standard_normal(int(0.03 * sr)) * np.exp(-np.arange(int(0.03 * sr)) / (0.006 * sr))
    for start in range(0, n - burst.size, beat):  # percussion
        out[start : start + burst.size] += 0.25 * burst
    out /= np.max(np.abs(out)) * 1.25
    return out.astype(np.float32)


def ffmpeg_roundtrip(pcm: F32, tmp_path: Path, *, filters: str = "",
                     codec: tuple[str, ...] = (), suffix: str = ".wav",
                     rate_in: int = SR, rate_out: int = ENGINE_SAMPLE_RATE) -> F32:
    """Send ``pcm`` through real ffmpeg (filters, then an encoder) and decode it back."""
    src = tmp_path / "src.f32"
    pcm.astype(np.float32).tofile(src)
    enc = tmp_path / f"enc{suffix}"
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "f32le", "-ar", str(rate_in),
           "-ac", "1", "-i", str(src)]
    if filters:
        cmd += ["-af", filters]
    cmd += [*(codec or ("-c:a", "pcm_s16le")), str(enc)]
    subprocess.run(cmd, check=True, timeout=60)
    dec = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(enc), "-ac", "1", "-ar", str(rate_out),
         "-f", "f32le", "-"],
        check=True, capture_output=True, timeout=60,
    )
    return np.frombuffer(dec.stdout, dtype=np.float32).copy()


@pytest.fixture(scope="module")
def tracks() -> dict[int, F32]:
    return {track_id: synth_track(seed=track_id) for track_id in (11, 12, 13, 14)}


@pytest.fixture(scope="module")
def index(tracks: dict[int, F32]) -> InMemoryIndex:
    idx = InMemoryIndex()
    for track_id, pcm in tracks.items():
        idx.add(track_id, extract(pcm, SR))
    return idx


def clip(pcm: F32, start_s: float, seconds: float, sr: int = SR) -> F32:
    return pcm[int(start_s * sr) : int((start_s + seconds) * sr)]


def best(pcm: F32, index: InMemoryIndex, sr: int = ENGINE_SAMPLE_RATE) -> Match:
    matches = match(extract(pcm, sr, query=True), index)
    assert matches, "no match"
    return matches[0]


# --- finding clips -----------------------------------------------------------------------


@pytest.mark.parametrize("track_id", [11, 12, 13, 14])
def test_clip_found_at_its_offset(tracks: dict[int, F32], index: InMemoryIndex,
                                  track_id: int) -> None:
    start = 7.3 + track_id % 3 * 5.1
    top = best(clip(tracks[track_id], start, 5.0), index, SR)
    assert top.track_id == track_id
    assert top.offset_s == pytest.approx(start, abs=0.05)
    assert top.speed == pytest.approx(1.0, abs=0.011)
    assert top.score >= SCORE_THRESHOLD


def test_whole_track_matches_itself_only_once(tracks: dict[int, F32],
                                              index: InMemoryIndex) -> None:
    matches = match(extract(tracks[12], SR, query=True), index)
    assert [m.track_id for m in matches] == [12]
    assert matches[0].offset_s == pytest.approx(0.0, abs=0.05)


def test_unrelated_music_is_rejected(index: InMemoryIndex) -> None:
    stranger = synth_track(seed=99)
    for start in (0.0, 10.0, 20.0):
        assert match(extract(clip(stranger, start, 10.0), SR, query=True), index) == []


def test_noise_is_rejected(index: InMemoryIndex) -> None:
    noise = np.random.default_rng(5).standard_normal(10 * SR).astype(np.float32) * 0.1
    assert match(extract(noise, SR, query=True), index) == []


def test_score_grows_with_clip_length(tracks: dict[int, F32], index: InMemoryIndex) -> None:
    short = best(clip(tracks[13], 4.0, 3.0), index, SR)
    long = best(clip(tracks[13], 4.0, 12.0), index, SR)
    assert short.track_id == long.track_id == 13
    assert long.score > short.score


# --- degradations through real ffmpeg -----------------------------------------------------

DEGRADATIONS = {
    "mp3 64k": {"codec": ("-c:a", "libmp3lame", "-b:a", "64k"), "suffix": ".mp3"},
    "aac 96k": {"codec": ("-c:a", "aac", "-b:a", "96k"), "suffix": ".m4a"},
    "opus 32k": {"codec": ("-c:a", "libopus", "-b:a", "32k"), "suffix": ".opus"},
    "gain +10 dB (clipped)": {"filters": "volume=10dB"},
    "gain -10 dB": {"filters": "volume=-10dB"},
    "resampled to 48 kHz": {"rate_out": 48000},
}


@pytest.mark.parametrize("name", list(DEGRADATIONS))
def test_degraded_clip_is_found(tracks: dict[int, F32], index: InMemoryIndex,
                                tmp_path: Path, name: str) -> None:
    opts = DEGRADATIONS[name]
    rate = int(opts.get("rate_out", ENGINE_SAMPLE_RATE))  # type: ignore[call-overload]
    pcm = ffmpeg_roundtrip(clip(tracks[14], 11.0, 5.0), tmp_path, **opts)  # type: ignore[arg-type]
    top = best(pcm, index, rate)
    assert top.track_id == 14
    assert top.offset_s == pytest.approx(11.0, abs=0.1)


@pytest.mark.parametrize("snr_db", [10.0, 5.0])
def test_noisy_clip_is_found(tracks: dict[int, F32], index: InMemoryIndex,
                             snr_db: float) -> None:
    pcm = clip(tracks[11], 15.0, 10.0)
    noise = np.random.default_rng(1).standard_normal(pcm.size)
    noise *= np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) / 10 ** (snr_db / 20)
    top = best((pcm + noise).astype(np.float32), index, SR)
    assert top.track_id == 11
    assert top.offset_s == pytest.approx(15.0, abs=0.1)


@pytest.mark.parametrize("speed", [0.97, 1.03])
def test_sped_up_or_slowed_clip_is_found(tracks: dict[int, F32], index: InMemoryIndex,
                                         tmp_path: Path, speed: float) -> None:
    # Tempo and pitch together, as a "sped-up" edit does: play the samples faster.
    pcm = ffmpeg_roundtrip(clip(tracks[12], 9.0, 10.0), tmp_path,
                           filters=f"asetrate={round(SR * speed)},aresample={SR}")
    top = best(pcm, index)
    assert top.track_id == 12
    assert top.speed == pytest.approx(speed, abs=0.01)
    assert top.offset_s == pytest.approx(9.0, abs=0.15)


# --- input handling ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pcm",
    [np.zeros(0, np.float32), np.zeros(5 * SR, np.float32), np.ones(100, np.float32)],
    ids=["empty", "silent", "too short"],
)
def test_nothing_to_hear_gives_an_empty_fingerprint(pcm: F32, index: InMemoryIndex) -> None:
    fp = extract(pcm, SR, query=True)
    assert len(fp) == 0
    assert match(fp, index) == []


@pytest.mark.parametrize(
    ("pcm", "rate", "message"),
    [
        (np.zeros((2, 1000), np.float32), SR, "mono"),
        (np.array([0.0, np.nan] * 600, np.float32), SR, "NaN"),
        (np.zeros(1000, np.float32), 0, "sample_rate"),
        (np.array(["a"] * 10), SR, "numeric"),
    ],
    ids=["stereo", "nan", "rate", "strings"],
)
def test_bad_input_is_refused(pcm: npt.NDArray[np.generic], rate: int, message: str) -> None:
    with pytest.raises(InvalidAudioError, match=message):
        extract(pcm, rate)


def test_int16_input_is_scaled(tracks: dict[int, F32]) -> None:
    pcm = clip(tracks[11], 0.0, 6.0)
    as_int = np.round(pcm * 32767).astype(np.int16)
    a, b = extract(pcm, SR), extract(as_int, SR)
    shared = np.intersect1d(a.hashes, b.hashes).size
    assert shared >= 0.9 * len(a) > 0


@pytest.mark.parametrize("chunk", [1000, 4096, 44100])
def test_fed_in_pieces_equals_all_at_once(tracks: dict[int, F32], tmp_path: Path,
                                          chunk: int) -> None:
    pcm = ffmpeg_roundtrip(clip(tracks[12], 0.0, 12.0), tmp_path)  # at the engine rate
    whole = extract(pcm, ENGINE_SAMPLE_RATE, query=True)
    ex = Extractor(ENGINE_SAMPLE_RATE, query=True)
    for start in range(0, pcm.size, chunk):
        ex.feed(pcm[start : start + chunk])
    pieces = ex.finish()
    assert len(whole) > 0
    assert np.array_equal(whole.hashes, pieces.hashes)
    assert np.array_equal(whole.times, pieces.times)
    assert pieces.duration_s == pytest.approx(12.0, abs=0.01)


def test_fingerprint_is_deterministic_and_compact(tracks: dict[int, F32]) -> None:
    a, b = extract(tracks[13], SR), extract(tracks[13], SR)
    assert np.array_equal(a.hashes, b.hashes) and np.array_equal(a.times, b.times)
    assert a.hashes.dtype == np.uint32 and a.times.dtype == np.int32
    assert np.all(np.diff(a.times) >= 0)
    rows_per_minute = len(a) / (a.duration_s / 60)
    assert 200 < rows_per_minute < 3000  # 12-byte rows: under 36 kB per minute
    assert a.nbytes == 8 * len(a)


# --- the index --------------------------------------------------------------------------


def test_removed_track_is_no_longer_found(tracks: dict[int, F32]) -> None:
    idx = InMemoryIndex()
    for track_id in (11, 12):
        idx.add(track_id, extract(tracks[track_id], SR))
    query = extract(clip(tracks[11], 3.0, 5.0), SR, query=True)
    assert [m.track_id for m in match(query, idx)] == [11]
    idx.remove(11)
    idx.remove(11)  # removing twice is fine
    assert match(query, idx) == []
    assert len(idx) == 1


def test_adding_again_replaces_the_rows(tracks: dict[int, F32]) -> None:
    idx = InMemoryIndex()
    fp = extract(tracks[11], SR)
    idx.add(1, fp)
    idx.add(1, fp)
    assert idx.row_count == len(fp)
    empty = Fingerprint(np.zeros(0, np.uint32), np.zeros(0, np.int32), 0.0)
    idx.add(1, empty)
    assert idx.row_count == 0


def test_engine_reads_the_pipelines_analysis_pcm_without_resampling() -> None:
    # The ingest pipeline's analysis PCM is fingerprinted as it is; another
    # rate would still work (extract resamples) but cost time on every upload.
    import pipelines

    assert pipelines.ANALYSIS_SAMPLE_RATE == ENGINE_SAMPLE_RATE


def test_hashes_fit_a_signed_32_bit_column(tracks: dict[int, F32]) -> None:
    fp = extract(tracks[14], SR, query=True)
    assert int(fp.hashes.max()) < HASH_LIMIT < 2**31
    assert int(fp.times.min()) >= 0
