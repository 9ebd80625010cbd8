"""Matching a query fingerprint against an index: scale-tolerant offset voting.

A true match puts the query's triplets at reference times ``t_ref = a * t_q + b``
for one speed factor ``a`` (1.0 unless the audio was sped up or slowed down)
and one offset ``b``.  For each candidate track we try a grid of ``a`` and
histogram ``b``: the highest bin counts the triplets that agree.

The score is calibrated as a significance: ``-log10`` of the probability that
chance alone (the track's other hits spread uniformly over the offsets
searched) puts that many distinct query anchors in the best bin, minus
``log10`` of the number of bins searched (offsets x speeds).  Chance would
then score at or below 0 whatever the query length or the index size.  Real
music is not uniform (repeated notes and chords give clustered chance hits),
so chance scores of a few units do occur: ``SCORE_THRESHOLD`` (10) was set on
the benchmark's out-of-catalog queries, where the highest chance score was
about 8 in 1,100 queries, while true 5 s clips (clean, MP3, 10 dB noise) score
about 70 (median; 90 % above 45).
Scores are comparable across queries and indexes; a policy may demand more
(e.g. 15) to block automatically and flag for review in between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from pipelines.fingerprint.index import Hits, Index
from pipelines.fingerprint.landmarks import FRAME_SECONDS, Fingerprint

#: Score at or above which a candidate is reported as a match.
SCORE_THRESHOLD = 10.0
#: Scores are capped here (an exact copy would otherwise score infinity).
SCORE_CAP = 999.0
#: Largest speed change searched (0.06 = from 6 % slower to 6 % faster).
MAX_SPEED_CHANGE = 0.06
#: At least this many agreeing triplets, whatever the score.
MIN_MATCHED = 6
#: Candidate tracks examined in detail (those with the most hits at one coarse offset).
MAX_CANDIDATES = 12
#: Offsets within ±this many frames of each other vote together.
_TOLERANCE = 1
#: Smallest offset range assumed for the chance rate (frames, ~20 s): a handful
#: of hits that happen to lie close together must not look like a dense background.
_MIN_WIDTH = 860


@dataclass(frozen=True)
class Match:
    """One matched track.

    ``offset_s``: where in the track the query starts (seconds, may be negative
    when the query starts before the track).  ``speed``: how much faster the
    query plays than the track (1.03 = sped up by 3 %).  ``matched``: triplets
    agreeing with that offset and speed.
    """

    track_id: int
    score: float
    offset_s: float
    speed: float
    matched: int


def _scale_grid(span_frames: float, max_change: float) -> npt.NDArray[np.float64]:
    """Speed factors to try, fine enough that drift over the query stays within tolerance."""
    step = (2.0 * _TOLERANCE + 1.0) / max(span_frames, 1.0)
    step = min(max(step, 0.0015), 0.01)
    n = math.ceil(max_change / step)
    return np.asarray(1.0 + step * np.arange(-n, n + 1), dtype=np.float64)


def _significance(best: int, background: int, width: int, n_scales: int) -> float:
    """``-log10`` P(a bin >= best) for Poisson bins, less log10(number of bins).

    ``background`` hits (those outside the best bin) spread over ``width``
    offset bins at each scale give the chance rate; the best bin also collects
    its neighbours within the tolerance.
    """
    lam = max(background, 1) * (2 * _TOLERANCE + 1) / max(width, _MIN_WIDTH)
    logsf = float(stats.poisson.logsf(best - 1, lam))
    return -logsf / math.log(10.0) - math.log10(width * n_scales)


def _vote(tq: npt.NDArray[np.float64], tr: npt.NDArray[np.float64],
          scales: npt.NDArray[np.float64]) -> tuple[int, int, float, float, int]:
    """Best count, hits outside the best bin, scale, offset at tq=0, offset bins per scale."""
    mid = 0.5 * (float(tq.min()) + float(tq.max()))
    tc = tq - mid
    offsets = tr[None, :] - scales[:, None] * tc[None, :]
    base = math.floor(float(offsets.min()))
    width = math.ceil(float(offsets.max())) - base + 2
    idx = np.rint(offsets - base).astype(np.int64)
    rows = np.arange(scales.size)[:, None] * width
    counts = np.bincount((idx + rows).ravel(), minlength=scales.size * width)
    counts = counts.reshape(scales.size, width)
    window = counts.copy()
    for d in range(1, _TOLERANCE + 1):
        window[:, d:] += counts[:, :-d]
        window[:, :-d] += counts[:, d:]
    flat = int(np.argmax(window))
    si, bi = divmod(flat, width)
    # Count distinct query times in the winning window: several triplets
    # sharing one anchor peak are one piece of evidence, not several.
    near = np.abs(idx[si] - bi) <= _TOLERANCE
    best = int(np.unique(tq[near]).size)
    background = int(tq.size - np.count_nonzero(near))
    a = float(scales[si])
    b = bi + base - a * mid
    # Refine speed and offset by least squares on the agreeing hits: the grid
    # step is coarse for short clips.
    x, y = tq[near], tr[near]
    if np.ptp(x) > 0:
        fit_a, fit_b = np.polyfit(x, y, 1)
        step = float(scales[1] - scales[0]) if scales.size > 1 else 0.0
        if abs(fit_a - a) <= step:
            a, b = float(fit_a), float(fit_b)
    return best, background, a, b, width


def _leaders(
    hits: Hits, query: Fingerprint, span: float, max_speed_change: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """The tracks worth a full vote: most hits in one coarse offset bin.

    Ranking by total hits would favour long tracks, which collect the most
    chance collisions; a coarse offset histogram (bins wide enough to absorb
    the largest speed change over the query) ranks by agreement instead.
    Returns (leader positions in ``ids``, track ids, each hit's position in ``ids``).
    """
    ids, inverse = np.unique(hits.track_ids, return_inverse=True)
    offsets = hits.times.astype(np.int64) - query.times[hits.query_pos].astype(np.int64)
    width = max(16, int(max_speed_change * span) + 2 * _TOLERANCE + 1)
    coarse = (offsets - offsets.min()) // width
    key = inverse.astype(np.int64) * (int(coarse.max()) + 2) + coarse
    uniq, counts = np.unique(key, return_counts=True)
    # A match straddling two bins: add each bin's right neighbour of the same track.
    paired = counts.copy()
    adjacent = np.diff(uniq) == 1
    paired[:-1][adjacent] += counts[1:][adjacent]
    best = np.zeros(ids.size, dtype=np.int64)
    np.maximum.at(best, uniq // (int(coarse.max()) + 2), paired)
    leaders = np.argsort(-best, kind="stable")[:MAX_CANDIDATES]
    return leaders[best[leaders] >= MIN_MATCHED], ids, inverse.astype(np.int64)


def match(
    query: Fingerprint,
    index: Index,
    *,
    threshold: float = SCORE_THRESHOLD,
    max_speed_change: float = MAX_SPEED_CHANGE,
    limit: int = 5,
) -> list[Match]:
    """Tracks of ``index`` that ``query`` is a clip of, best first (empty: no match).

    ``query`` should come from ``extract(..., query=True)``.
    """
    if len(query) == 0:
        return []
    hits = index.lookup(query.hashes)
    if len(hits) == 0:
        return []
    span = float(query.times.max() - query.times.min())
    leaders, ids, inverse = _leaders(hits, query, span, max_speed_change)
    if leaders.size == 0:
        return []
    rank = np.full(ids.size, -1, dtype=np.int64)
    rank[leaders] = np.arange(leaders.size)
    cand = rank[inverse]
    sel = cand >= 0
    cand = cand[sel]
    tq_all = query.times[hits.query_pos[sel]].astype(np.int64)
    tr_all = hits.times[sel].astype(np.int64)
    # One vote per (track, query time, reference time): edge probes and
    # repeated hashes must not count twice.  Sorting also groups by track.
    key = np.unique((cand << 44) | (tq_all << 22) | tr_all)
    cand = key >> 44
    tq_all = (key >> 22) & ((1 << 22) - 1)
    tr_all = key & ((1 << 22) - 1)
    starts = np.searchsorted(cand, np.arange(leaders.size))
    ends = np.append(starts[1:], cand.size)
    counts = ends - starts
    order = np.argsort(-counts, kind="stable")
    scales = _scale_grid(span, max_speed_change)
    results: list[Match] = []
    for c in order:
        if counts[c] < MIN_MATCHED:
            break
        track_id = ids[leaders[c]]
        part = slice(starts[c], ends[c])
        best, background, a, b0, width = _vote(
            tq_all[part].astype(np.float64), tr_all[part].astype(np.float64), scales
        )
        if best < MIN_MATCHED:
            continue
        score = min(_significance(best, background, width, scales.size), SCORE_CAP)
        if score >= threshold:
            results.append(
                Match(
                    track_id=int(track_id),
                    score=round(score, 2),
                    offset_s=b0 * FRAME_SECONDS,
                    speed=a,
                    matched=best,
                )
            )
    results.sort(key=lambda m: -m.score)
    return results[:limit]
