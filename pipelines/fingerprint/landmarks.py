"""Spectral-peak triplet fingerprints that survive speed, tempo and pitch changes.

Why triplets and not the classic peak pairs: a pair hash (f1, f2, dt) changes
as soon as audio is sped up by 1 %, because every frequency is multiplied by the
speed factor and every time interval divided by it.  Three peaks give quantities
that do not change under such scaling:

* the intervals between the peaks' frequencies measured in semitones
  (a log-frequency difference is invariant to pitch scaling), and
* the ratio of the two time intervals (invariant to time scaling).

Those invariants carry too little information on their own, so the hash also
holds the anchor's pitch and the triplet's time span, both quantised coarsely
enough that a few percent of scaling rarely moves them into another bin (and a
query probes the neighbouring bin when it is close to an edge).

Reference fingerprints are sparse to keep the index small; query fingerprints
are denser (more peaks, more triplets per anchor) so that they contain most of
the reference's triplets even after degradation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import fft as sp_fft
from scipy import signal

from pipelines.fingerprint.errors import InvalidAudioError

#: Rate the engine analyses at; other rates are resampled (with a small cost).
ENGINE_SAMPLE_RATE = 11025
#: STFT size and hop (samples at ENGINE_SAMPLE_RATE).
N_FFT = 1024
HOP = 256
#: Seconds per STFT frame: the unit of every time value in a Fingerprint.
FRAME_SECONDS = HOP / ENGINE_SAMPLE_RATE

#: Analysed band (FFT bins).  Below ~120 Hz a 1024-point FFT cannot place a peak
#: precisely enough in semitones; above ~4.3 kHz low-bitrate codecs and noise
#: dominate.
_MIN_BIN = 11
_MAX_BIN = 400
_REF_HZ = 55.0

U32 = npt.NDArray[np.uint32]
I32 = npt.NDArray[np.int32]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Params:
    """Peak density and triplet fan-out: one instance for references, one for queries."""

    peaks_per_second: float
    targets_per_anchor: int
    probe_edges: bool
    #: Local-maximum neighbourhood half sizes (frames, bins).
    peak_dt: int = 4
    peak_df: int = 6


REFERENCE = Params(peaks_per_second=11.0, targets_per_anchor=3, probe_edges=False)
QUERY = Params(peaks_per_second=14.0, targets_per_anchor=6, probe_edges=True)


@dataclass(frozen=True)
class Fingerprint:
    """Hashes of one piece of audio.

    ``hashes[i]`` was computed from a triplet whose first peak is at frame
    ``times[i]`` (``FRAME_SECONDS`` each).  A query fingerprint may hold the same
    triplet several times under neighbouring hashes (edge probes).
    """

    hashes: U32
    times: I32
    duration_s: float
    peak_count: int = 0
    frame_seconds: float = field(default=FRAME_SECONDS)

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of hash + time data (what an index row stores besides the track id)."""
        return int(self.hashes.nbytes + self.times.nbytes)


@dataclass(frozen=True)
class Peaks:
    """Spectral peaks: frame index, pitch in semitones above 55 Hz, log power.

    ``when`` is the frame time refined between frames (parabolic fit), so that
    time ratios do not jump with the STFT grid's alignment to the clip.
    """

    t: I32
    pitch: F32
    power: F32
    when: F32


def _validate(pcm: np.ndarray, sample_rate: int) -> F32:
    if not isinstance(sample_rate, int | np.integer) or sample_rate < 4000:
        raise InvalidAudioError(f"sample_rate must be an integer >= 4000, got {sample_rate!r}")
    arr = np.asarray(pcm)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise InvalidAudioError(f"pcm must be mono (1-D), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise InvalidAudioError(f"pcm must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind in "iu":
        scale = float(np.iinfo(arr.dtype).max)
        out = arr.astype(np.float32) / np.float32(scale)
    else:
        out = arr.astype(np.float32, copy=False)
    if out.size and not np.isfinite(out).all():
        raise InvalidAudioError("pcm contains NaN or infinite samples")
    return out


def _to_engine_rate(pcm: F32, sample_rate: int) -> F32:
    if sample_rate == ENGINE_SAMPLE_RATE or pcm.size == 0:
        return pcm
    g = int(np.gcd(sample_rate, ENGINE_SAMPLE_RATE))
    out = signal.resample_poly(pcm, ENGINE_SAMPLE_RATE // g, sample_rate // g)
    return np.asarray(out, dtype=np.float32)


_WINDOW = np.hanning(N_FFT + 2)[1:-1].astype(np.float32)
#: Spectral power below this is silence (a full-scale sine peaks near 6.5e4).
_POWER_FLOOR = 1e-3
#: Frames transformed per FFT call: big enough to amortise call overhead, small
#: enough to stay in cache.
_BLOCK_FRAMES = 1024


def _power(samples: F32) -> F32:
    """STFT power of every complete frame of ``samples`` in the analysed band."""
    frames = np.lib.stride_tricks.sliding_window_view(samples, N_FFT)[::HOP]
    out = np.empty((frames.shape[0], _MAX_BIN - _MIN_BIN + 2), dtype=np.float32)
    for s in range(0, frames.shape[0], _BLOCK_FRAMES):
        spec = sp_fft.rfft(frames[s : s + _BLOCK_FRAMES] * _WINDOW, axis=1)
        band = spec[:, _MIN_BIN - 1 : _MAX_BIN + 1]
        np.add(band.real**2, band.imag**2, out=out[s : s + _BLOCK_FRAMES])
    return out


def _sliding_max(a: F32, half: int, axis: int) -> F32:
    """Max over ``[i - half, i + half]`` along ``axis`` (outside counts as -inf).

    Log-step doubling: a handful of vectorised ``maximum`` passes, several
    times faster than ``ndimage.maximum_filter`` here.
    """
    width = 2 * half + 1
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    m = np.pad(a, pad, constant_values=-np.inf)
    cover = 1

    def cut(x: F32, lo: int, hi: int | None) -> F32:
        return x[lo:hi] if axis == 0 else x[:, lo:hi]

    while cover * 2 <= width:
        m = np.maximum(cut(m, 0, -cover), cut(m, cover, None))
        cover *= 2
    n = a.shape[axis]
    rest = width - cover
    out: F32 = np.maximum(cut(m, 0, n), cut(m, rest, rest + n))
    return out


@dataclass
class _Candidates:
    """Local maxima found so far, with what interpolation needs."""

    t: list[npt.NDArray[np.int64]] = field(default_factory=list)
    k: list[npt.NDArray[np.int64]] = field(default_factory=list)
    cells: list[F32] = field(default_factory=list)  # power at (t, k-1..k+1), (t-1, k), (t+1, k)


class Extractor:
    """Fingerprints audio fed in pieces, as it is decoded.

    ``feed`` does the heavy work (STFT and local-maximum search) on each piece,
    so a decoder can run concurrently; ``finish`` selects and hashes the peaks.
    Audio at another rate than ``ENGINE_SAMPLE_RATE`` is buffered and resampled
    in ``finish``.
    """

    def __init__(self, sample_rate: int, *, query: bool = False) -> None:
        _validate(np.zeros(0, np.float32), sample_rate)
        self.sample_rate = int(sample_rate)
        self.params = QUERY if query else REFERENCE
        self._pending: list[F32] = []  # only when resampling
        self._tail: F32 = np.zeros(0, np.float32)
        self._samples = 0
        self._frames = 0  # frames computed
        self._ctx: F32 = np.zeros((0, _MAX_BIN - _MIN_BIN + 2), np.float32)
        self._ctx_start = 0  # global frame index of self._ctx[0]
        self._detected = 0  # frames whose peaks are final
        self._cand = _Candidates()

    def feed(self, pcm: np.ndarray) -> Extractor:
        """Add the next samples (mono, float in [-1, 1] or integers)."""
        samples = _validate(pcm, self.sample_rate)
        if self.sample_rate != ENGINE_SAMPLE_RATE:
            self._pending.append(samples)
            return self
        self._consume(samples, final=False)
        return self

    def _consume(self, samples: F32, *, final: bool) -> None:
        self._samples += samples.size
        buf = np.concatenate([self._tail, samples]) if self._tail.size else samples
        n_frames = (buf.size - N_FFT) // HOP + 1 if buf.size >= N_FFT else 0
        if n_frames > 0:
            rows = _power(buf[: (n_frames - 1) * HOP + N_FFT])
            self._tail = buf[n_frames * HOP :].copy()
            self._frames += n_frames
            self._ctx = np.concatenate([self._ctx, rows]) if self._ctx.size else rows
        else:
            self._tail = buf.copy()
        self._detect(final=final)

    def _detect(self, *, final: bool) -> None:
        """Find local maxima in frames whose neighbourhood is complete."""
        dt, df = self.params.peak_dt, self.params.peak_df
        upto = self._frames if final else self._frames - dt
        if upto <= self._detected or self._ctx.shape[0] == 0:
            return
        ctx = self._ctx
        local = _sliding_max(_sliding_max(ctx, df, axis=1), dt, axis=0)
        lo = self._detected - self._ctx_start
        hi = upto - self._ctx_start
        part = ctx[lo:hi]
        is_peak = (part == local[lo:hi]) & (part > _POWER_FLOOR)
        is_peak[:, 0] = False
        is_peak[:, -1] = False
        t, k = np.nonzero(is_peak)
        if t.size:
            t = t + lo
            before = ctx[np.maximum(t - 1, 0), k]
            before = np.where(t - 1 >= 0, before, ctx[t, k])
            after = ctx[np.minimum(t + 1, ctx.shape[0] - 1), k]
            cells = np.stack([ctx[t, k - 1], ctx[t, k], ctx[t, k + 1], before, after], axis=1)
            self._cand.t.append(t + self._ctx_start)
            self._cand.k.append(k)
            self._cand.cells.append(cells)
        self._detected = upto
        # Keep the rows later frames still need as neighbourhood.
        keep_from = max(self._detected - dt - 1, self._ctx_start)
        self._ctx = ctx[keep_from - self._ctx_start :]
        self._ctx_start = keep_from

    def finish(self) -> Fingerprint:
        """Select and hash the peaks of everything fed."""
        if self.sample_rate != ENGINE_SAMPLE_RATE:
            pcm = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
            self._pending = []
            self._consume(_to_engine_rate(pcm, self.sample_rate), final=True)
        else:
            self._detect(final=True)
        peaks = _peaks(self._cand, self.params)
        hashes, times = _hashes(peaks, self.params)
        order = np.argsort(times, kind="stable")
        return Fingerprint(
            hashes=hashes[order],
            times=times[order],
            duration_s=self._samples / ENGINE_SAMPLE_RATE,
            peak_count=int(peaks.t.size),
        )


def _parabola(left: F32, mid: F32, right: F32) -> F32:
    """Offset of a parabola's vertex through three log values (in [-0.5, 0.5])."""
    denom = left - 2 * mid + right
    safe = np.where(denom < 0, denom, -1.0)
    out: F32 = np.clip(np.where(denom < 0, 0.5 * (left - right) / safe, 0.0), -0.5, 0.5)
    return out.astype(np.float32)


def _peaks(cand: _Candidates, params: Params) -> Peaks:
    """Thin the candidates and place them between bins and frames."""
    if not cand.t:
        empty_f = np.zeros(0, np.float32)
        return Peaks(np.zeros(0, np.int32), empty_f, empty_f, empty_f)
    t = np.concatenate(cand.t)
    k = np.concatenate(cand.k)
    logs = np.log(np.maximum(np.concatenate(cand.cells), np.float32(1e-12)))
    v = logs[:, 1]
    keep = _thin(t.astype(np.int32), v, params.peaks_per_second)
    t, k, logs, v = t[keep], k[keep], logs[keep], v[keep]
    delta = _parabola(logs[:, 0], v, logs[:, 2])
    freq = (k + _MIN_BIN - 1 + delta) * (ENGINE_SAMPLE_RATE / N_FFT)
    pitch = (12.0 * np.log2(freq / _REF_HZ)).astype(np.float32)
    when = (t + _parabola(logs[:, 3], v, logs[:, 4])).astype(np.float32)
    return Peaks(t.astype(np.int32), pitch, v.astype(np.float32), when)


def _thin(t: I32, v: F32, per_second: float) -> npt.NDArray[np.bool_]:
    """Keep a peak if it is among the ``per_second`` strongest within ±0.5 s.

    A sliding window (not fixed blocks) so that a clip cut at any point selects
    the same peaks as the full track.  Computed as a sliding "k-th largest"
    over per-frame top-k lists, merged by log-step doubling.
    """
    k = max(int(per_second), 1)
    half = round(0.5 / FRAME_SECONDS)
    n_frames = int(t[-1]) + 1
    first = np.searchsorted(t, t, side="left")
    slot = np.arange(t.size) - first  # rank of the candidate within its frame
    per_frame = np.full((n_frames, max(int(slot.max()) + 1, k)), -np.inf, dtype=np.float32)
    per_frame[t, slot] = v
    top = -np.sort(-per_frame, axis=1)[:, :k]
    width = 2 * half + 1
    m = np.pad(top, [(half, half), (0, 0)], constant_values=-np.inf)
    cover = 1

    def merge(a: F32, b: F32) -> F32:
        both = np.concatenate([a, b], axis=1)
        out: F32 = -np.partition(-both, k - 1, axis=1)[:, :k]
        return out

    while cover * 2 <= width:
        m = merge(m[:-cover], m[cover:])
        cover *= 2
    rest = width - cover
    window = merge(m[:n_frames], m[rest : rest + n_frames])
    kth = window.min(axis=1)
    keep: npt.NDArray[np.bool_] = v >= kth[t]
    return keep


def _triplets(peaks: Peaks, params: Params) -> tuple[I32, I32, I32]:
    """Indices (anchor, second, third) of the triplets to hash, in time order."""
    n = peaks.t.size
    scan = 4 * params.targets_per_anchor + 8
    t = peaks.t
    p = peaks.pitch
    cols = np.arange(1, scan + 1)
    j = np.arange(n)[:, None] + cols[None, :]
    inside = j < n
    jc = np.minimum(j, max(n - 1, 0))
    dt = t[jc] - t[:, None]
    valid = (
        inside
        & (dt >= LAYOUT.min_gap_frames)
        & (dt <= LAYOUT.max_span_frames)
        & (np.abs(p[jc] - p[:, None]) <= LAYOUT.zone_semitones)
    )
    rank = np.cumsum(valid, axis=1)
    chosen = valid & (rank <= params.targets_per_anchor)
    anchors: list[I32] = []
    seconds: list[I32] = []
    thirds: list[I32] = []
    k = params.targets_per_anchor
    # The r-th chosen target of each anchor, as a column index (or -1).
    pos = np.full((n, k), -1, dtype=np.int64)
    rr, cc = np.nonzero(chosen)
    pos[rr, rank[rr, cc] - 1] = jc[rr, cc]
    for a in range(k):
        for b in range(a + 1, k):
            sel = (pos[:, a] >= 0) & (pos[:, b] >= 0)
            ia = np.nonzero(sel)[0]
            ja = pos[ia, a]
            kb = pos[ia, b]
            strict = t[ja] < t[kb]
            anchors.append(ia[strict].astype(np.int32))
            seconds.append(ja[strict].astype(np.int32))
            thirds.append(kb[strict].astype(np.int32))
    if not anchors:
        z = np.zeros(0, np.int32)
        return z, z, z
    return np.concatenate(anchors), np.concatenate(seconds), np.concatenate(thirds)


@dataclass(frozen=True)
class Layout:
    """How triplet quantities become one 32-bit hash (shared by references and queries).

    Fields, each quantised to a bin and combined in mixed radix:

    * the intervals anchor -> second and anchor -> third peak (semitones),
    * the time ratio (t2 - t1) / (t3 - t1),
    * the time span t3 - t1 (log bins),
    * the anchor's pitch (coarse bins),
    * the loudness order of the three peaks (one of 6 permutations).

    Intervals and the time ratio do not move when audio is sped up; span and
    pitch move by log(speed), so their bins are wide and queries probe the
    neighbouring bin near an edge.
    """

    interval_step: float = 0.5  # semitones
    zone_semitones: float = 15.5
    ratio_bins: int = 16
    span_base: float = 1.15
    max_span_frames: int = 60  # target zone: later peaks within this many frames
    min_gap_frames: int = 2  # ... and at least this many
    pitch_step: float = 4.0  # semitones
    #: Probe margins (fraction of a bin) per field, for queries.
    probe: tuple[float, ...] = (0.2, 0.2, 0.25, 0.2, 0.12, 0.0)

    @property
    def interval_bins(self) -> int:
        return 2 * math.ceil(self.zone_semitones / self.interval_step) + 3

    @property
    def sizes(self) -> tuple[int, ...]:
        span_bins = math.ceil(math.log(self.max_span_frames + 1) / math.log(self.span_base)) + 1
        pitch_bins = math.ceil(80.0 / self.pitch_step) + 1
        return (self.interval_bins, self.interval_bins, self.ratio_bins, span_bins, pitch_bins, 6)


LAYOUT = Layout()
#: Every hash is below this (the product of the field sizes): it fits a signed
#: 32-bit SQL integer.
HASH_LIMIT = math.prod(LAYOUT.sizes)
assert HASH_LIMIT < 2**31
_PERMUTATION = {(0, 1, 2): 0, (0, 2, 1): 1, (1, 0, 2): 2, (1, 2, 0): 3, (2, 0, 1): 4, (2, 1, 0): 5}


def _hash_fields(
    peaks: Peaks, a: I32, b: I32, c: I32, layout: Layout
) -> list[npt.NDArray[np.float64]]:
    """Each field's continuous value in bin units (its floor is the bin)."""
    t, p, v = peaks.when.astype(np.float64), peaks.pitch.astype(np.float64), peaks.power
    centre = layout.interval_bins // 2 + 0.5
    i1 = (p[b] - p[a]) / layout.interval_step + centre
    i2 = (p[c] - p[a]) / layout.interval_step + centre
    span = np.maximum(t[c] - t[a], 1.0)
    ratio = (t[b] - t[a]) / span * layout.ratio_bins
    span_bin = np.log(span) / np.log(layout.span_base)
    pitch_bin = p[a] / layout.pitch_step
    order = np.argsort(-np.stack([v[a], v[b], v[c]], axis=1), axis=1)
    code = np.zeros(a.size, dtype=np.float64)
    for perm, value in _PERMUTATION.items():
        code[(order == perm).all(axis=1)] = value
    return [i1, i2, ratio, span_bin, pitch_bin, code + 0.5]


def _pack(quant: list[npt.NDArray[np.int64]], sizes: tuple[int, ...]) -> U32:
    h = np.zeros(quant[0].shape, dtype=np.int64)
    for q, n in zip(quant, sizes, strict=True):
        h = h * n + q
    return h.astype(np.uint32)


def _hashes(peaks: Peaks, params: Params) -> tuple[U32, I32]:
    layout = LAYOUT
    a, b, c = _triplets(peaks, params)
    if a.size == 0:
        return np.zeros(0, np.uint32), np.zeros(0, np.int32)
    sizes = layout.sizes
    cont = _hash_fields(peaks, a, b, c, layout)
    quant = [
        np.clip(np.floor(x).astype(np.int64), 0, n - 1) for x, n in zip(cont, sizes, strict=True)
    ]
    hashes = [_pack(quant, sizes)]
    times = [peaks.t[a]]
    if params.probe_edges:
        for f, margin in enumerate(layout.probe):
            if margin <= 0:
                continue
            frac = cont[f] - np.floor(cont[f])
            for side, near in ((-1, frac < margin), (1, frac > 1 - margin)):
                idx = np.nonzero(near)[0]
                moved = [q[idx] for q in quant]
                moved[f] = moved[f] + side
                ok = (moved[f] >= 0) & (moved[f] < sizes[f])
                if not ok.any():
                    continue
                hashes.append(_pack([m[ok] for m in moved], sizes))
                times.append(peaks.t[a[idx[ok]]])
    return np.concatenate(hashes), np.concatenate(times).astype(np.int32)


def extract(pcm: np.ndarray, sample_rate: int, *, query: bool = False) -> Fingerprint:
    """Fingerprint mono PCM (float in [-1, 1] or integer samples).

    ``query=True`` makes the denser fingerprint used to look audio up; index
    references with the default.  Silent or too-short audio gives an empty
    fingerprint (which matches nothing), not an error.

    Raises:
        InvalidAudioError: not 1-D numeric audio, non-finite samples, or a
            sample rate below 4 kHz.
    """
    return Extractor(sample_rate, query=query).feed(pcm).finish()
