"""CPU cost of the media pipeline against the bare ffmpeg command line, on real music.

For every track of the corpus (Debian's ``drascula-music`` by default) this
measures, with ``resource.getrusage`` for this process and its children:

* **pipeline** -- what the worker spends per track: ``probe()`` (sniffing +
  ffprobe) and ``process()`` (the single ffmpeg pass, then the waveform with
  numpy), including all Python overhead;
* **reference** -- the same outputs (playback M4A, preview M4A, analysis PCM,
  loudness) from one plain ``ffmpeg`` command typed by hand below, measured in
  the same run on the same file.

Both run with one thread per ffmpeg, so the difference is exactly what the
pipeline adds around ffmpeg. The ratio pipeline/reference should be <= 1.15:
anything near 2 would mean a second decode crept in. The process exits with
status 1 when the overall ratio is above the target.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.corpus import DEFAULT_PACKAGE, corpus_files
from pipelines import (
    ANALYSIS_SAMPLE_RATE,
    MediaLimits,
    MediaRejected,
    ProbeResult,
    job_workdir,
    probe,
    process,
)
from pipelines.transcode import preview_window

TARGET = 1.15


@dataclass(frozen=True)
class Cpu:
    """CPU seconds (user + system) of this process and of waited-for children."""

    own: float
    children: float

    @staticmethod
    def now() -> Cpu:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return Cpu(me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime)

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.own - other.own, self.children - other.children)

    @property
    def total(self) -> float:
        return self.own + self.children


@dataclass(frozen=True)
class Row:
    track: str
    duration_s: float
    probe: Cpu
    process: Cpu
    reference: Cpu
    same_pcm: bool

    @property
    def pipeline(self) -> float:
        return self.probe.total + self.process.total

    @property
    def ratio(self) -> float:
        return self.pipeline / self.reference.total


def reference_argv(src: Path, out: Path, probed: ProbeResult) -> list[str]:
    """The hand-written ffmpeg command producing the pipeline's outputs."""
    start = preview_window(probed).start_s
    fade_in = ",afade=t=in:st=0:d=0.5" if start > 0 else ""
    graph = (
        "[0:a:0]aformat=sample_rates=44100:channel_layouts=stereo,"
        "ebur128=peak=true:framelog=verbose,asplit=3[pb][pv][an];"
        f"[pv]atrim=start={start}:duration=30,asetpts=PTS-STARTPTS{fade_in},"
        "afade=t=out:st=29:d=1[pvo];"
        f"[an]aformat=sample_fmts=flt:sample_rates={ANALYSIS_SAMPLE_RATE}:channel_layouts=mono[ano]"
    )
    aac = ["-c:a", "aac", "-b:a", "128k", "-ar", "44100", "-ac", "2", "-threads", "1"]
    aac += ["-movflags", "+faststart", "-map_metadata", "-1"]
    return [
        "ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-threads", "1",
        "-filter_complex_threads", "1", "-i", str(src), "-filter_complex", graph,
        "-map", "[pb]", *aac, str(out / "playback.m4a"),
        "-map", "[pvo]", *aac, str(out / "preview.m4a"),
        "-map", "[ano]", "-f", "f32le", str(out / "analysis.f32"),
    ]  # fmt: skip


@dataclass(frozen=True)
class PipelineRun:
    probe: Cpu
    process: Cpu
    probed: ProbeResult
    duration_s: float
    pcm_bytes: int


def run_pipeline(src: Path, limits: MediaLimits) -> PipelineRun:
    """What the worker does for one track: probe, process (one decode), waveform."""
    with job_workdir() as workdir:
        t0 = Cpu.now()
        probed = probe(src, limits)
        t1 = Cpu.now()
        media = process(src, probed, workdir, limits)
        t2 = Cpu.now()
        return PipelineRun(
            t1 - t0, t2 - t1, probed, media.duration_s, media.analysis_pcm.stat().st_size
        )


def run_reference(src: Path, probed: ProbeResult) -> tuple[Cpu, int]:
    """The bare command line; returns its CPU and the size of its analysis PCM."""
    with tempfile.TemporaryDirectory(prefix="bench-ref-") as ref:
        t0 = Cpu.now()
        subprocess.run(
            reference_argv(src, Path(ref), probed), check=True, stderr=subprocess.DEVNULL
        )
        return Cpu.now() - t0, (Path(ref) / "analysis.f32").stat().st_size


def measure(src: Path, limits: MediaLimits, repeat: int, reference_first: bool) -> Row:
    """Best of ``repeat`` runs of each side, alternating which goes first.

    The minimum is the least disturbed measurement on a shared machine; the
    alternation keeps cache warm-up from favouring one side.
    """
    src.read_bytes()  # page cache warm for both sides
    probed = probe(src, limits)
    pipelines: list[PipelineRun] = []
    references: list[tuple[Cpu, int]] = []
    for i in range(repeat):
        if (i % 2 == 0) == reference_first:
            references.append(run_reference(src, probed))
            pipelines.append(run_pipeline(src, limits))
        else:
            pipelines.append(run_pipeline(src, limits))
            references.append(run_reference(src, probed))
    best = min(pipelines, key=lambda r: r.probe.total + r.process.total)
    reference, ref_pcm = min(references, key=lambda r: r[0].total)
    return Row(src.name, best.duration_s, best.probe, best.process, reference,
               ref_pcm == best.pcm_bytes)  # fmt: skip


HEADER = (
    f"{'track':<16}{'dur s':>7}{'ffprobe':>9}{'ffmpeg':>9}{'python':>8}"
    f"{'pipeline':>10}{'bare':>8}{'ratio':>7}  same"
)


def format_row(row: Row) -> str:
    python = row.probe.own + row.process.own
    return (
        f"{row.track:<16}{row.duration_s:>7.1f}{row.probe.children:>9.3f}"
        f"{row.process.children:>9.3f}{python:>8.3f}{row.pipeline:>10.3f}"
        f"{row.reference.total:>8.3f}{row.ratio:>7.3f}  {'yes' if row.same_pcm else 'NO'}"
    )


def summary(rows: list[Row]) -> tuple[str, float]:
    pipeline = sum(r.pipeline for r in rows)
    reference = sum(r.reference.total for r in rows)
    audio = sum(r.duration_s for r in rows)
    ratio = pipeline / reference
    lines = [
        "-" * len(HEADER),
        f"{len(rows)} tracks, {audio / 60:.1f} min of audio",
        f"pipeline CPU  {pipeline:8.2f} s  ({pipeline / len(rows):.3f} s/track, "
        f"{audio / pipeline:.0f}x real time)",
        f"bare ffmpeg   {reference:8.2f} s  ({reference / len(rows):.3f} s/track)",
        f"median per-track ratio {statistics.median(r.ratio for r in rows):.3f}",
        f"OVERALL RATIO pipeline / bare ffmpeg = {ratio:.3f}  (target <= {TARGET})  "
        + ("PASS" if ratio <= TARGET else "FAIL"),
    ]
    return "\n".join(lines), ratio


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("--package", default=DEFAULT_PACKAGE, help="Debian music package")
    parser.add_argument("--limit", type=int, default=0, help="only the first N tracks")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the best counts")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tracks = corpus_files(args.package)
    if args.limit:
        tracks = tracks[: args.limit]
    print(
        f"{len(tracks)} tracks from {args.package}, best of {max(args.repeat, 1)}; "
        f"CPU seconds (user+sys)\n{HEADER}"
    )
    limits, rows = MediaLimits(), []
    for index, track in enumerate(tracks):
        try:
            row = measure(track, limits, max(args.repeat, 1), reference_first=index % 2 == 1)
        except MediaRejected as exc:
            print(f"{track.name:<16} skipped: {exc}")
            continue
        rows.append(row)
        print(format_row(row), flush=True)
    if not rows:
        print("no track could be measured")
        return 1
    text, ratio = summary(rows)
    print(text)
    return 0 if ratio <= TARGET and all(r.same_pcm for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
