"""The contained subprocess runner: timeouts kill the whole group, output stays bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipelines import MediaProcessingError, MediaTimeout
from pipelines.ffmpeg_run import DETAIL_LIMIT, TAIL_LINES, run_tool, summarise_stderr


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, within_s: float = 10.0) -> bool:
    """SIGKILL is asynchronous: give the kernel a moment to finish the process."""
    deadline = time.monotonic() + within_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_captures_exit_status_stdout_and_stderr() -> None:
    run = run_tool(
        ["sh", "-c", "echo out; echo '[error] broken thing' >&2; echo chatter >&2; exit 3"],
        timeout_s=30,
        memory_limit_bytes=None,
        capture_stdout=True,
    )
    assert run.returncode == 3
    assert run.stdout == b"out\n"
    assert run.stderr_tail == ("[error] broken thing", "chatter")
    assert run.problems == ("[error] broken thing",)
    assert run.summary() == "[error] broken thing"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pidfile}; echo '[error] still going' >&2; wait"
    with pytest.raises(MediaTimeout) as caught:
        run_tool(["sh", "-c", script], timeout_s=1.0, memory_limit_bytes=None)
    assert "exceeded the 1 s time limit" in caught.value.detail
    assert "still going" in caught.value.detail
    grandchild = int(pidfile.read_text())
    assert _wait_gone(grandchild), f"grandchild {grandchild} survived the timeout"


def test_the_exit_is_seen_when_it_happens_not_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Popen.wait(timeout)`` sleeps up to 50 ms between looks; every tool run paid it."""
    def no_polling(seconds: float) -> None:
        raise AssertionError(f"polled the child (slept {seconds} s)")

    monkeypatch.setattr(subprocess.time, "sleep", no_polling)
    run = run_tool(["sh", "-c", "sleep 0.2; exit 4"], timeout_s=30, memory_limit_bytes=None)
    assert run.returncode == 4


def test_without_pidfds_the_polling_wait_still_works(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.delattr(os, "pidfd_open")
    assert run_tool(["sh", "-c", "exit 5"], timeout_s=30, memory_limit_bytes=None).returncode == 5
    with pytest.raises(MediaTimeout):
        run_tool(["sleep", "30"], timeout_s=0.5, memory_limit_bytes=None)


def test_memory_limit_is_applied_to_the_child() -> None:
    limit = 512 * 1024 * 1024
    run = run_tool(
        ["sh", "-c", "sleep 0.5; cat /proc/$$/limits"],
        timeout_s=30,
        memory_limit_bytes=limit,
        capture_stdout=True,
    )
    line = next(x for x in run.stdout.decode().splitlines() if x.startswith("Max address space"))
    assert line.split()[3:5] == [str(limit), str(limit)]


def test_missing_binary_is_a_processing_error(tmp_path: Path) -> None:
    with pytest.raises(MediaProcessingError, match="cannot start"):
        run_tool([str(tmp_path / "no-such-ffmpeg")], timeout_s=5, memory_limit_bytes=None)


def test_stderr_flood_is_bounded() -> None:
    flood = 'i=0; while [ $i -lt 5000 ]; do echo "[error] frame $i" >&2; i=$((i+1)); done'
    run = run_tool(
        ["sh", "-c", flood],
        timeout_s=60,
        memory_limit_bytes=None,
    )
    assert len(run.stderr_tail) == TAIL_LINES
    assert run.stderr_tail[-1] == "[error] frame 4999"
    assert len(run.summary()) <= DETAIL_LIMIT


class SoftTimeLimit(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded, raised from a signal handler."""


def test_exception_in_the_caller_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"

    def interrupt(signum: int, frame: object) -> None:
        raise SoftTimeLimit

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(SoftTimeLimit):
            run_tool(["sh", "-c", script], timeout_s=120, memory_limit_bytes=None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert _wait_gone(int(pidfile.read_text()))


def test_summary_dedupes_strips_addresses_and_keeps_latest() -> None:
    lines = [
        "[mp3float @ 0x55d0c0] [error] Header missing",
        "[mp3float @ 0x77aa00] [error] Header missing",
        "[info] noise",
        "[mp3float @ 0x55d0c0] [error] Header missing",
        "[error] Error while decoding stream #0:0",
    ]
    assert summarise_stderr(lines) == (
        "[info] noise\n[mp3float] [error] Header missing (x3)\n"
        "[error] Error while decoding stream #0:0"
    )
    many = [f"[error] distinct problem number {i}" for i in range(500)]
    summary = summarise_stderr(many)
    assert len(summary) <= DETAIL_LIMIT
    assert summary.endswith("number 499")
