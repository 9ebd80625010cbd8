"""The fingerprint benchmark (see /shared/design/FINGERPRINT.md, "How to measure").

1. Corpus: every distinct track of the Debian packages; even positions are the
   catalog (indexed), odd positions are out of catalog.
2. Recall: for each catalog track, EXCERPTS excerpts of 22 s at seeded random
   offsets are degraded with ffmpeg under every condition; clips of 3/5/10/20 s
   are cut from them at random points, plus whole tracks for a few conditions.
   A query counts as found when the top match is the right track with a score
   at or above the engine's SCORE_THRESHOLD; how many of those are also at the
   true offset (±0.5 s) is reported separately (game music loops, so a clip can
   rightly match a repeat of itself).
3. False positives: clips (and whole tracks) of the out-of-catalog half; any
   match at the threshold is a false positive.
4. Extraction speed: decode + extract of every track against ``fpcalc -length 0``
   (whole files both), wall clock and CPU time, same run: ffmpeg streaming into the
   extractor one file at a time, and ``catalog add``'s own per-file work (validate,
   decode, fingerprint) one file at a time and two at a time (its default ``--jobs``).
5. Query latency (lookup + match, in memory) at 1k/10k/100k indexed tracks,
   the catalog padded with filler tracks whose hashes are drawn from the real
   hash distribution at random times: the engine's own cost.
6. The index as the product stores it (``sql.py``): PostgreSQL and SQLite
   scratch databases grown to the same sizes, bytes on disk per minute of
   audio and lookup + match latency through ``SqlIndex``.

Needs PostgreSQL (``BENCH_PG_ADMIN_URL``, by default the local server with trust
auth); ``--pg-sizes ''`` leaves that stage out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.fingerprint import sql
from bench.fingerprint.corpus import unique_tracks
from bench.fingerprint.degrade import (
    CACHE,
    CONDITIONS,
    Condition,
    cache_path,
    decode,
    degrade_all,
)
from pipelines.fingerprint import (
    ENGINE_SAMPLE_RATE,
    SCORE_THRESHOLD,
    Extractor,
    Fingerprint,
    Hits,
    InMemoryIndex,
    extract,
    landmarks,
    match,
)
from pipelines.fingerprint.index import lookup_sorted
from pipelines.limits import MediaLimits
from soundkit import fingerprints as fpx

CLIP_LENGTHS = (3, 5, 10, 20)
EXCERPT_S = 22.0
WHOLE_CONDITIONS = ("clean", "mp3 64k", "white 10dB", "speed +3%")
OFFSET_TOLERANCE_S = 0.5
ROW_BYTES = 12  # hash int4 + track_id int4 + t int4: the data alone, before any storage overhead
PLOT = Path("var/bench/fingerprint.png")
INDEX_PLOT = Path("var/bench/fingerprint-index.png")

_INDEX: InMemoryIndex | None = None


@dataclass(frozen=True)
class Query:
    cond: str
    length: str  # "3s" ... "whole"
    track: int  # -1 for out of catalog
    cache_key: str
    path: str
    start: int
    stop: int
    truth_offset_s: float


@dataclass(frozen=True)
class Outcome:
    query: Query
    found: bool
    offset_ok: bool  # found, and at the true offset (a looped track may match elsewhere)
    wrong: bool  # matched another track (catalog queries) / anything (out of catalog)
    top_score: float
    extract_ms: float
    match_ms: float


def _pcm_cache(path: Path) -> Path:
    return CACHE / "pcm" / f"{zlib.crc32(str(path).encode()):08x}.f32"


def track_pcm(path: Path) -> npt.NDArray[np.float32]:
    cache = _pcm_cache(path)
    if cache.exists():
        return np.fromfile(cache, dtype=np.float32)
    pcm = decode(path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    pcm.tofile(cache)
    return pcm


def _evaluate(q: Query) -> Outcome:
    assert _INDEX is not None
    pcm = np.fromfile(q.path, dtype=np.float32)[q.start : q.stop]
    t0 = time.perf_counter()
    fp = extract(pcm, ENGINE_SAMPLE_RATE, query=True)
    t1 = time.perf_counter()
    matches = match(fp, _INDEX, threshold=-1e9)
    t2 = time.perf_counter()
    top = matches[0] if matches else None
    score = top.score if top else float("-inf")
    accepted = top is not None and score >= SCORE_THRESHOLD
    found = bool(accepted and top is not None and top.track_id == q.track)
    offset_ok = bool(
        found and top is not None and abs(top.offset_s - q.truth_offset_s) <= OFFSET_TOLERANCE_S
    )
    wrong = bool(accepted and top is not None and top.track_id != q.track)
    return Outcome(q, found, offset_ok, wrong, score, (t1 - t0) * 1e3, (t2 - t1) * 1e3)


Job = tuple[int, Path, int, float, Condition]


def _plan_catalog(catalog: list[Path], excerpts: int, pool: ThreadPoolExecutor) -> list[Query]:
    rng = np.random.default_rng(20240601)
    jobs = []
    for ti, path in enumerate(catalog):
        dur = track_pcm(path).size / ENGINE_SAMPLE_RATE
        for k in range(excerpts):
            start = float(rng.uniform(0, max(dur - EXCERPT_S, 0.0)))
            for cond in CONDITIONS:
                jobs.append((ti, path, k, start, cond))
        for cond in CONDITIONS:
            if cond.name in WHOLE_CONDITIONS:
                jobs.append((ti, path, -1, 0.0, cond))

    def cache_key(path: Path, k: int, start: float) -> str:
        where = "whole" if k < 0 else f"{k}-{round(start * 1000)}"
        return f"{path.stem}-{zlib.crc32(str(path).encode()):08x}-{where}"

    def make(excerpt: tuple[int, Path, int, float, tuple[Condition, ...]]) -> None:
        _, path, k, start, conds = excerpt
        degrade_all(path, start, None if k < 0 else EXCERPT_S, cache_key(path, k, start), conds)

    by_excerpt: dict[tuple[int, int], list[Job]] = defaultdict(list)
    for job in jobs:
        by_excerpt[(job[0], job[2])].append(job)
    list(pool.map(make, [(ti, js[0][1], k, js[0][3], tuple(j[4] for j in js))
                         for (ti, k), js in by_excerpt.items()]))
    queries: list[Query] = []
    for ti, _, k, start, cond in jobs:
        key = cache_key(catalog[ti], k, start)
        cache = cache_path(cond, key)
        n = cache.stat().st_size // 4
        if k < 0:
            queries.append(Query(cond.name, "whole", ti, key, str(cache), 0, n, 0.0))
            continue
        qrng = np.random.default_rng(zlib.crc32(f"{key}/{cond.name}".encode()))
        for length in CLIP_LENGTHS:
            size = length * ENGINE_SAMPLE_RATE
            if n < size:
                continue
            a = int(qrng.integers(0, n - size + 1))
            truth = start + a / ENGINE_SAMPLE_RATE * cond.time_scale
            queries.append(Query(cond.name, f"{length}s", ti, key, str(cache), a, a + size, truth))
    return queries


def _plan_outside(outside: list[Path], per_track: int) -> list[Query]:
    rng = np.random.default_rng(7)
    queries = []
    for path in outside:
        pcm_path = _pcm_cache(path)
        n = track_pcm(path).size
        queries.append(Query("out of catalog", "whole", -1, path.stem, str(pcm_path), 0, n, 0.0))
        for i in range(per_track):
            length = CLIP_LENGTHS[i % len(CLIP_LENGTHS)]
            size = length * ENGINE_SAMPLE_RATE
            if n < size:
                continue
            a = int(rng.integers(0, n - size + 1))
            queries.append(
                Query("out of catalog", f"{length}s", -1, path.stem, str(pcm_path), a, a + size, 0)
            )
    return queries


def _run_queries(queries: list[Query], workers: int) -> list[Outcome]:
    if workers <= 1:
        return [_evaluate(q) for q in queries]
    with mp.get_context("fork").Pool(workers) as pool:
        return pool.map(_evaluate, queries, chunksize=16)


def _decode_and_extract(path: Path) -> tuple[Fingerprint, float]:
    """What ingest costs when fingerprinting runs beside the decoder.

    ffmpeg decodes to the engine's rate in its own process while the
    Extractor transforms each piece as it arrives (a reader thread keeps the
    pipe drained), as a streaming ingest would.
    """
    # A short resampling filter: the band above 4.3 kHz is not analysed anyway.
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-i", str(path), "-vn",
           "-ac", "1", "-af", f"aresample={ENGINE_SAMPLE_RATE}:filter_size=8:phase_shift=6",
           "-f", "f32le", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    pieces: queue.Queue[bytes] = queue.Queue()
    stream = proc.stdout

    def reader() -> None:
        while chunk := stream.read(1 << 18):
            pieces.put(chunk)
        pieces.put(b"")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    ex = Extractor(ENGINE_SAMPLE_RATE)
    carry = b""
    while chunk := pieces.get():
        data = carry + chunk
        whole = len(data) // 4 * 4
        ex.feed(np.frombuffer(data[:whole], dtype=np.float32))
        carry = data[whole:]
    thread.join()
    proc.wait()
    fp = ex.finish()
    return fp, fp.duration_s


def _speed_vs_fpcalc(tracks: list[Path]) -> dict[str, float]:
    """Whole files, one at a time: ``fpcalc -length 0`` vs ffmpeg decode + extract."""
    audio_s = fp_s = ours_s = ours_cpu = fp_cpu = engine_s = 0.0
    for path in tracks:
        r0 = os.times()
        t0 = time.perf_counter()
        # fpcalc exits 3 on a benign "End of file" decode message; the output is there.
        done = subprocess.run(["fpcalc", "-length", "0", str(path)], capture_output=True)
        if b"FINGERPRINT=" not in done.stdout:
            raise RuntimeError(f"fpcalc failed on {path}: {done.stderr[-300:]!r}")
        t1 = time.perf_counter()
        r1 = os.times()
        _, seconds = _decode_and_extract(path)
        t2 = time.perf_counter()
        r2 = os.times()
        pcm = track_pcm(path)  # the analysis PCM ingest already has
        t3 = time.perf_counter()
        extract(pcm, ENGINE_SAMPLE_RATE)
        engine_s += time.perf_counter() - t3
        fp_s += t1 - t0
        ours_s += t2 - t1
        fp_cpu += (r1.children_user + r1.children_system) - (r0.children_user + r0.children_system)
        ours_cpu += (r2.children_user + r2.children_system + r2.user + r2.system) - (
            r1.children_user + r1.children_system + r1.user + r1.system
        )
        audio_s += seconds
    tool = {jobs: _catalog_add_speed(tracks, jobs) for jobs in (1, 2)}
    return {
        "fpcalc_s": fp_s,
        "ffmpeg_decode_s": _ffmpeg_decode_only_s(tracks),
        **{f"{tool_name}_start_ms": _start_ms(tool_name) for tool_name in ("ffmpeg", "ffprobe",
                                                                          "fpcalc")},
        "tool1_ratio": fp_s / tool[1][0],
        "tool2_ratio": fp_s / tool[2][0],
        "tool_cpu_ratio": fp_cpu / max(tool[2][1], 1e-9),
        "audio_s": audio_s,
        "fpcalc_x": audio_s / fp_s,
        "ours_x": audio_s / ours_s,
        "ratio": fp_s / ours_s,
        "fpcalc_cpu_x": audio_s / max(fp_cpu, 1e-9),
        "ours_cpu_x": audio_s / max(ours_cpu, 1e-9),
        "cpu_ratio": fp_cpu / max(ours_cpu, 1e-9),
        "engine_x": audio_s / engine_s,
        "engine_ratio": fp_s / engine_s,
    }


def _ffmpeg_decode_only_s(tracks: list[Path]) -> float:
    """Wall seconds for the ``ffmpeg`` command to decode every track, nothing else."""
    started = time.perf_counter()
    for path in tracks:
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-i", str(path),
                        "-vn", "-f", "null", "-"], capture_output=True, check=True)
    return time.perf_counter() - started


def _start_ms(tool: str, runs: int = 10) -> float:
    """Mean wall milliseconds of ``tool -version``: what one start of the tool costs."""
    started = time.perf_counter()
    for _ in range(runs):
        subprocess.run([tool, "-version"], capture_output=True, check=False)
    return (time.perf_counter() - started) / runs * 1e3


def _catalog_add_speed(tracks: list[Path], jobs: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``catalog add``'s per-file work on ``tracks``, ``jobs`` at once.

    That is :func:`soundkit.fingerprints.prepare_catalog_file`: SHA-256, ffprobe
    validation, the decode to the analysis PCM, fingerprinting (no database).
    """
    limits = MediaLimits(min_duration_s=fpx.CATALOG_MIN_DURATION_S,
                         max_duration_s=fpx.CATALOG_MAX_DURATION_S)
    before, started = os.times(), time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        prepared = list(pool.map(lambda p: fpx.prepare_catalog_file(p, limits, {}), tracks))
    wall, after = time.perf_counter() - started, os.times()
    # A silent track is decoded and yields no hashes: that is an answer, not a failure.
    failed = [p.path.name for p in prepared if p.analysed is None and p.reason != "no_fingerprint"]
    if failed:
        raise RuntimeError(f"catalog add could not fingerprint {failed}")
    cpu = sum(after[:4]) - sum(before[:4])  # user, system, children's user and system
    return wall, cpu


def _chromaprint(path: Path) -> npt.NDArray[np.uint32]:
    done = subprocess.run(["fpcalc", "-raw", "-length", "60", str(path)], capture_output=True)
    line = next(ln for ln in done.stdout.decode().splitlines() if ln.startswith("FINGERPRINT="))
    return np.array([int(x) for x in line.split("=", 1)[1].split(",") if x], dtype=np.uint32)


def _ber(a: npt.NDArray[np.uint32], b: npt.NDArray[np.uint32]) -> float:
    """Chromaprint's comparison: lowest bit error rate over shifts of ±2 s."""
    best = 1.0
    for shift in range(-16, 17):
        x, y = (a[shift:], b) if shift >= 0 else (a, b[-shift:])
        n = min(x.size, y.size)
        if n < 40:
            continue
        best = min(best, float(np.unpackbits((x[:n] ^ y[:n]).view(np.uint8)).mean()))
    return best


#: Below this chromaprint bit error rate two files are one recording (unrelated
#: music sits near 0.5; in this corpus the next lowest pair, a silent track, is 0.29).
SAME_RECORDING_BER = 0.28


def _drop_duplicates(catalog: list[Path], outside: list[Path]
                     ) -> tuple[list[Path], list[str]]:
    """Out-of-catalog files that chromaprint says are a catalog recording are not 'unrelated'."""
    prints = {p: _chromaprint(p) for p in catalog + outside}
    keep, notes = [], []
    for o in outside:
        ber, twin = min((_ber(prints[o], prints[c]), c.name) for c in catalog)
        if ber < SAME_RECORDING_BER:
            notes.append(f"{o.name} (= {twin}, BER {ber:.2f})")
        else:
            keep.append(o)
    return keep, notes


def _synthetic_pool(pcms: list[npt.NDArray[np.float32]], count: int,
                    rng: np.random.Generator) -> list[npt.NDArray[np.uint32]]:
    """Reference hashes of made-up tracks with the corpus's statistics.

    Each is the peaks of a real track, transposed, re-timed and jittered (per
    peak pitch, time and level), then hashed: new interval/ratio combinations
    with realistic distributions, unlike re-using the corpus's own hashes.
    """
    sources = []
    for pcm in pcms:
        ex = Extractor(ENGINE_SAMPLE_RATE)
        ex.feed(pcm)
        ex._detect(final=True)  # the peaks stage on its own (private on purpose)
        sources.append(landmarks._peaks(ex._cand, landmarks.REFERENCE))
    pool = []
    for _ in range(count):
        src = sources[int(rng.integers(0, len(sources)))]
        n = src.t.size
        if n < 4:
            continue
        scale = rng.uniform(0.85, 1.15)
        when = src.when * scale + rng.normal(0, 1.5, n)
        order = np.argsort(when, kind="stable")
        when_32 = when[order].astype(np.float32)
        pitch = (src.pitch[order] + rng.uniform(-6, 6) + rng.normal(0, 1.0, n)).astype(np.float32)
        power = (src.power[order] + rng.normal(0, 1.0, n)).astype(np.float32)
        t = np.maximum(np.rint(when_32), 0).astype(np.int32)
        peaks = landmarks.Peaks(t, pitch, power, when_32)
        pool.append(landmarks._hashes(peaks, landmarks.REFERENCE)[0])
    return pool


def _filler(pool: list[npt.NDArray[np.uint32]], tracks: int, frames: int,
            rng: np.random.Generator) -> npt.NDArray[np.uint32]:
    """Hashes of ``tracks`` filler tracks: pool entries with a random pitch-field shift."""
    lengths = np.array([p.size for p in pool])
    picks = rng.integers(0, len(pool), tracks)
    total = int(lengths[picks].sum())
    out = np.empty(total, dtype=np.uint32)
    pos = 0
    for shift in range(-4, 5):
        chosen = picks[(np.arange(tracks) % 9) == shift + 4]
        if chosen.size == 0:
            continue
        h = _shift_pitch(np.concatenate([pool[i] for i in chosen]), shift)
        out[pos : pos + h.size] = h
        pos += h.size
    return out


def _shift_pitch(hashes: npt.NDArray[np.uint32], shift: int) -> npt.NDArray[np.uint32]:
    """Move the anchor-pitch field of every hash by ``shift`` bins (clipped)."""
    sizes = landmarks.LAYOUT.sizes
    pitch_unit, pitch_bins = sizes[5], sizes[4]
    h = hashes.astype(np.int64)
    pitch = (h // pitch_unit) % pitch_bins
    h += (np.clip(pitch + shift, 0, pitch_bins - 1) - pitch) * pitch_unit
    return h.astype(np.uint32)


def _filler_tracks(pool: list[npt.NDArray[np.uint32]], frames: int,
                   rng: np.random.Generator) -> sql.Filler:
    """Filler tracks one at a time (id, hashes, sorted times), for the SQL indexes."""

    def tracks(first_id: int, count: int) -> Iterator[tuple[int, npt.NDArray[np.uint32],
                                                            npt.NDArray[np.int32]]]:
        for track_id in range(first_id, first_id + count):
            source = pool[int(rng.integers(0, len(pool)))]
            hashes = _shift_pitch(source, int(rng.integers(-4, 5)))
            times = np.sort(rng.integers(0, frames, hashes.size, dtype=np.int32))
            yield track_id, hashes, times

    return tracks


def _latency(real: InMemoryIndex, pool: list[npt.NDArray[np.uint32]], frames: int,
             query_fps: list[Fingerprint], sizes: tuple[int, ...]
             ) -> list[tuple[int, int, float, float, float, float]]:
    """p50/p95 of lookup + match as filler tracks are added to the real catalog."""
    rng = np.random.default_rng(3)
    real_h = np.concatenate([real._tracks[t][0] for t in real._tracks])
    real_t = np.concatenate([real._tracks[t][1] for t in real._tracks])
    real_id = np.concatenate([np.full(real._tracks[t][0].size, t, np.int32) for t in real._tracks])
    order = np.argsort(real_h, kind="stable")
    real_h, real_t, real_id = real_h[order], real_t[order], real_id[order]
    out = []
    for size in sizes:
        filler = _filler(pool, max(size - len(real), 0), frames, rng)
        filler.sort()
        # Filler rows get random track ids and times (they only need to cost
        # what real rows cost); the real catalog's rows are merged in sorted.
        at = np.searchsorted(filler, real_h)
        hashes = np.insert(filler, at, real_h)
        del filler
        ids = np.insert(rng.integers(1_000_000, 1_000_000 + size, hashes.size - real_h.size,
                                     dtype=np.int32), at, real_id)
        times = np.insert(rng.integers(0, frames, hashes.size - real_h.size, dtype=np.int32),
                          at, real_t)
        index = _SortedIndex(hashes, ids, times)
        match(query_fps[0], index)  # warm up
        lat = []
        found = 0
        for fp in query_fps:
            t0 = time.perf_counter()
            m = match(fp, index)
            lat.append((time.perf_counter() - t0) * 1e3)
            found += bool(m)
        rows = float(np.mean([len(index.lookup(fp.hashes)) for fp in query_fps]))
        out.append((size, int(hashes.size), float(np.percentile(lat, 50)),
                    float(np.percentile(lat, 95)), found / len(query_fps), rows))
        del index, hashes, ids, times
    return out


class _SortedIndex:
    """Read-only index over hash-sorted arrays, searched by the engine's own lookup."""

    def __init__(self, hashes: np.ndarray, ids: np.ndarray, times: np.ndarray) -> None:
        self.arrays = (hashes, ids, times)

    def add(self, track_id: int, fp: Fingerprint) -> None:
        raise NotImplementedError

    def remove(self, track_id: int) -> None:
        raise NotImplementedError

    def lookup(self, hashes: npt.NDArray[np.uint32]) -> Hits:
        return lookup_sorted(*self.arrays, hashes)


def _table(outcomes: list[Outcome]) -> tuple[dict[tuple[str, str], float], str]:
    cells: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for o in outcomes:
        if o.query.track >= 0:
            cells[(o.query.cond, o.query.length)].append(o.found)
    lengths = [f"{n}s" for n in CLIP_LENGTHS] + ["whole"]
    recall = {k: float(np.mean(v)) for k, v in cells.items()}
    lines = [f"{'condition':<16}" + "".join(f"{c:>8}" for c in lengths) + "   queries/cell"]
    for cond in CONDITIONS:
        row = f"{cond.name:<16}"
        for c in lengths:
            row += f"{recall[(cond.name, c)]:>8.3f}" if (cond.name, c) in recall else f"{'-':>8}"
        n = len(cells.get((cond.name, "10s"), []))
        lines.append(row + f"   {n}")
    return recall, "\n".join(lines)


def _threshold_sweep(outcomes: list[Outcome]) -> str:
    """How recall and false positives trade as a policy raises the bar."""
    inside = [o for o in outcomes if o.query.track >= 0]
    outside = [o for o in outcomes if o.query.track < 0]
    parts = []
    for thr in sorted({SCORE_THRESHOLD, 8.0, 10.0, 12.0, 15.0}):
        def hit(o: Outcome, thr: float = thr) -> bool:
            return o.top_score >= thr

        r5 = np.mean([hit(o) and o.found for o in inside if o.query.length == "5s"])
        r10 = np.mean([hit(o) and o.found for o in inside if o.query.length == "10s"])
        fp = sum(hit(o) for o in outside)
        parts.append(f"score >= {thr:g}: recall 5 s {r5:.3f}, 10 s {r10:.3f} (all conditions), "
                     f"false positives {fp}/{len(outside)}")
    return "\n".join(parts)


def _save(outcomes: list[Outcome], path: Path) -> None:
    rows = [
        {"cond": o.query.cond, "length": o.query.length, "track": o.query.track,
         "found": o.found, "offset_ok": o.offset_ok, "wrong": o.wrong,
         "score": o.top_score if np.isfinite(o.top_score) else None,
         "extract_ms": round(o.extract_ms, 2), "match_ms": round(o.match_ms, 2)}
        for o in outcomes
    ]
    path.write_text(json.dumps(rows))


def _plot(recall: dict[tuple[str, str], float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in CONDITIONS]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(15, 5.5))
    width = 0.2
    for i, length in enumerate(CLIP_LENGTHS):
        vals = [recall.get((n, f"{length}s"), np.nan) for n in names]
        ax.bar(x + (i - 1.5) * width, vals, width, label=f"{length} s clips")
    ax.axhline(0.98, color="k", lw=0.8, ls="--")
    ax.axhline(0.80, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, names, rotation=55, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"recall (score >= {SCORE_THRESHOLD})")
    ax.set_title("Fingerprint recall per degradation and clip length", loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=4, fontsize="small")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _stored(args: argparse.Namespace, catalog_fps: list[Fingerprint], filler: sql.Filler,
            query_fps: list[Fingerprint], rows_per_min: float) -> list[sql.SqlPoint]:
    """Size and latency of the SQL indexes the product runs on."""
    points: list[sql.SqlPoint] = []
    log = lambda line: print(line, flush=True)  # noqa: E731
    if _sizes(args.sqlite_sizes):
        with sql.scratch_sqlite() as url:
            points += sql.measure(url, "SQLite", catalog_fps, filler, query_fps,
                                  _sizes(args.sqlite_sizes), rows_per_min, log)
    if _sizes(args.pg_sizes):
        with sql.scratch_postgres() as url:
            points += sql.measure(url, "PostgreSQL", catalog_fps, filler, query_fps,
                                  _sizes(args.pg_sizes), rows_per_min, log)
    return points


def _plot_index(latency: list[tuple[int, int, float, float, float, float]],
                stored: list[sql.SqlPoint]) -> None:
    """Query p95 and bytes per minute against the number of indexed tracks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat_ax, size_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {"in memory": "tab:grey", "SQLite": "tab:green", "PostgreSQL": "tab:blue"}
    lat_ax.plot([r[0] for r in latency], [r[3] for r in latency], "o-", label="in memory",
                color=colours["in memory"])
    for backend in sorted({p.backend for p in stored}):
        points = [p for p in stored if p.backend == backend]
        style = {"label": backend, "color": colours.get(backend)}
        lat_ax.plot([p.tracks for p in points], [p.p95_ms for p in points], "o-", **style)
        size_ax.plot([p.tracks for p in points], [p.kb_per_minute for p in points], "o-",
                     **style)
    lat_ax.axhline(50, color="k", lw=0.8, ls="--")
    size_ax.axhline(40, color="k", lw=0.8, ls="--")
    for ax, label in ((lat_ax, "lookup + match p95, 10 s clip (ms)"),
                      (size_ax, "index on disk (kB per minute of audio)")):
        ax.set_xscale("log")
        ax.set_xlabel("indexed tracks")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
    lat_ax.set_yscale("log")
    size_ax.set_ylim(bottom=0)
    fig.suptitle("Fingerprint index: latency and size as it grows (dashed: targets)", x=0.01,
                 ha="left")
    fig.tight_layout()
    INDEX_PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(INDEX_PLOT, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fingerprint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--excerpts", type=int, default=3, help="excerpts per catalog track")
    ap.add_argument("--outside-clips", type=int, default=32, help="clips per out-of-catalog track")
    ap.add_argument("--sizes", default="1000,10000,100000", help="index sizes for latency")
    ap.add_argument("--pg-sizes", default="1000,10000,100000",
                    help="index sizes on PostgreSQL ('' to leave PostgreSQL out)")
    ap.add_argument("--sqlite-sizes", default="1000,10000", help="index sizes on SQLite")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    global _INDEX
    started = time.perf_counter()

    tracks = unique_tracks()
    catalog, outside = tracks[0::2], tracks[1::2]
    outside, dupes = _drop_duplicates(catalog, outside)
    print(f"corpus: {len(tracks)} distinct files, {len(catalog)} catalog, "
          f"{len(outside)} out of catalog; left out as a copy of a catalog recording "
          f"(chromaprint): {', '.join(dupes) or 'none'}", flush=True)

    index = InMemoryIndex()
    catalog_fps = [extract(track_pcm(path), ENGINE_SAMPLE_RATE) for path in catalog]
    for ti, fp in enumerate(catalog_fps):
        index.add(ti, fp)
    rows = sum(len(fp) for fp in catalog_fps)
    minutes = sum(fp.duration_s for fp in catalog_fps) / 60
    for path in outside:
        track_pcm(path)
    _INDEX = index
    rows_per_min = rows / minutes
    print(f"index: {rows} rows for {minutes:.1f} min of audio", flush=True)

    with ThreadPoolExecutor(max(args.workers, 1)) as pool:
        queries = _plan_catalog(catalog, args.excerpts, pool)
    queries += _plan_outside(outside, args.outside_clips)
    print(f"queries: {len(queries)} (degraded audio cached under {CACHE}) "
          f"[{time.perf_counter() - started:.0f} s]", flush=True)
    outcomes = _run_queries(queries, args.workers)
    print(f"queries done [{time.perf_counter() - started:.0f} s]", flush=True)

    recall, table = _table(outcomes)
    outside_o = [o for o in outcomes if o.query.track < 0]
    fp_count = sum(o.wrong for o in outside_o)
    wrong_catalog = sum(o.wrong for o in outcomes if o.query.track >= 0)
    n_catalog = sum(1 for o in outcomes if o.query.track >= 0)
    ooc_scores = np.array([o.top_score for o in outside_o])
    ooc_scores = ooc_scores[np.isfinite(ooc_scores)]

    speed = _speed_vs_fpcalc(tracks)

    ten = [o for o in outcomes if o.query.length == "10s" and o.query.track >= 0]
    lat_rng = np.random.default_rng(5)
    picked = [ten[i] for i in lat_rng.choice(len(ten), size=min(200, len(ten)), replace=False)]
    query_fps = [
        extract(np.fromfile(o.query.path, np.float32)[o.query.start : o.query.stop],
                ENGINE_SAMPLE_RATE, query=True)
        for o in picked
    ]
    hash_pool = _synthetic_pool([track_pcm(p) for p in tracks], 4000,
                                np.random.default_rng(11))
    frames = int(minutes * 60 / len(catalog) / (256 / ENGINE_SAMPLE_RATE))
    latency = _latency(index, hash_pool, frames, query_fps, tuple(_sizes(args.sizes)))
    print(f"latency done [{time.perf_counter() - started:.0f} s]", flush=True)
    stored = _stored(args, catalog_fps, _filler_tracks(hash_pool, frames,
                                                   np.random.default_rng(13)),
                     query_fps, rows_per_min)
    print(f"stored indexes done [{time.perf_counter() - started:.0f} s]", flush=True)

    _plot(recall)
    _plot_index(latency, stored)
    _save(outcomes, CACHE / "outcomes.json")
    ext_ms = np.array([o.extract_ms for o in outcomes if o.query.length == "10s"])
    print()
    print(f"RECALL (top match = right track, score >= {SCORE_THRESHOLD})")
    print(table)
    found = [o for o in outcomes if o.found]
    print(f"offset within {OFFSET_TOLERANCE_S} s of the truth: "
          f"{np.mean([o.offset_ok for o in found]):.4f} of found queries")
    print()
    print(_threshold_sweep(outcomes))
    print(f"false positives: {fp_count} / {len(outside_o)} out-of-catalog queries "
          f"({fp_count / max(len(outside_o), 1):.4f}); highest out-of-catalog score "
          f"{ooc_scores.max() if ooc_scores.size else float('nan'):.2f}; "
          f"wrong track on catalog queries: {wrong_catalog} / {n_catalog}")
    print(f"extraction (whole files, decode included, {speed['audio_s'] / 60:.0f} min of audio): "
          f"ours {speed['ours_x']:.0f}x real time, fpcalc {speed['fpcalc_x']:.0f}x -> "
          f"ratio {speed['ratio']:.2f} wall clock; CPU time: ours {speed['ours_cpu_x']:.0f}x, "
          f"fpcalc {speed['fpcalc_cpu_x']:.0f}x -> ratio {speed['cpu_ratio']:.2f}")
    print(f"catalog add's per-file work (validate, decode, fingerprint) against fpcalc one "
          f"file at a time: ratio {speed['tool1_ratio']:.2f} one file at a time, "
          f"{speed['tool2_ratio']:.2f} two at a time (--jobs 2, the default) wall clock; "
          f"CPU time ratio {speed['tool_cpu_ratio']:.2f}")
    print(f"where the standalone time goes: ffmpeg decoding alone (no resampling) "
          f"{speed['ffmpeg_decode_s']:.1f} s against fpcalc's whole run "
          f"{speed['fpcalc_s']:.1f} s; one start of ffmpeg {speed['ffmpeg_start_ms']:.0f} ms, "
          f"ffprobe {speed['ffprobe_start_ms']:.0f} ms, fpcalc {speed['fpcalc_start_ms']:.0f} ms")
    print(f"extraction from the analysis PCM (no second decode, as ingest runs it): "
          f"{speed['engine_x']:.0f}x real time -> ratio {speed['engine_ratio']:.1f} vs fpcalc")
    print(f"query extraction, 10 s clip: p50 {np.percentile(ext_ms, 50):.1f} ms, "
          f"p95 {np.percentile(ext_ms, 95):.1f} ms")
    q_hashes = np.mean([len(fp) for fp in query_fps])
    for size, n_rows, p50, p95, hit, fetched in latency:
        print(f"lookup+match at {size:>6} tracks ({n_rows / 1e6:.0f}M rows, in memory): "
              f"p50 {p50:.1f} ms, p95 {p95:.1f} ms; 10 s queries ({q_hashes:.0f} hashes) "
              f"fetch {fetched:.0f} rows, matched {hit:.3f}")
    print(f"index: {rows_per_min:.0f} rows per minute of audio = "
          f"{rows_per_min * ROW_BYTES / 1000:.1f} kB/min of row data ({ROW_BYTES} bytes a row, "
          f"in memory); on disk, with each database's overhead:")
    print(sql.table(stored))
    print(f"per-query outcomes: {CACHE / 'outcomes.json'}")
    print(f"plots: {PLOT}, {INDEX_PLOT}   total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
