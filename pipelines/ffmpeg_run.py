"""Run ffmpeg/ffprobe as a contained child process.

ffmpeg-python builds command lines well but runs them with no timeout and
unbounded pipes, so this module runs them itself:

* ``stdin`` is ``/dev/null`` (ffmpeg otherwise reads keystrokes and can stall).
* The child gets its own session/process group, and on timeout, error or any
  exception in the caller (a Celery soft time limit, Ctrl-C) the whole group is
  killed with SIGKILL and reaped -- nothing is left behind.
* ``RLIMIT_AS`` is applied right after spawn with ``prlimit`` rather than a
  ``preexec_fn``, which is unsafe in threaded parents (Celery, gunicorn).
* The exit is seen the moment it happens (a pidfd), not by ``Popen.wait``'s
  polling, which slept up to 50 ms between looks on every run.
* stderr is drained by a thread into a bounded buffer: a corrupt file can make
  ffmpeg log one line per frame, and that must not grow without limit.
* :func:`summarise_stderr` turns the captured lines into a short, deduplicated
  text (at most ~2 kB) for the job's error detail.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import select
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipelines.errors import MediaProcessingError, MediaTimeout

MAX_LINE_BYTES = 1024
TAIL_LINES = 400
PROBLEM_LINES = 80
DETAIL_LIMIT = 2000
STDOUT_LIMIT = 8 * 1024 * 1024
_PROBLEM_LEVELS = ("[warning]", "[error]", "[fatal]", "[panic]")
_ADDRESS = re.compile(r" @ 0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class ToolRun:
    """Outcome of one finished tool process."""

    returncode: int
    stdout: bytes
    stderr_tail: tuple[str, ...]
    problems: tuple[str, ...]

    def summary(self) -> str:
        """The stderr summary suited to an error detail."""
        return summarise_stderr(self.problems or self.stderr_tail)


class _StderrCollector:
    """Keeps the last lines of stderr, and separately the last warnings/errors.

    Problems get their own buffer so that trailing informational lines (ffmpeg's
    end-of-run statistics) cannot push the actual error out of the summary.
    """

    def __init__(self) -> None:
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.problems: deque[str] = deque(maxlen=PROBLEM_LINES)

    def drain(self, stream: IO[bytes]) -> None:
        while raw := stream.readline(MAX_LINE_BYTES):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.tail.append(line)
            if any(level in line for level in _PROBLEM_LEVELS):
                self.problems.append(line)


class _StdoutCollector:
    """Reads stdout up to a cap; flags overflow instead of buffering without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False

    def drain(self, stream: IO[bytes]) -> None:
        while chunk := stream.read(65536):
            if self.size + len(chunk) > self.limit:
                self.overflow = True
                continue
            self.chunks.append(chunk)
            self.size += len(chunk)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group (it leads its own session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _limit_memory(pid: int, limit: int | None) -> None:
    if limit is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))


def _spawn(argv: Sequence[str], capture_stdout: bool) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise MediaProcessingError(f"cannot start {argv[0]}: {exc}") from exc


def _start_reader(
    target: Callable[[IO[bytes]], None], stream: IO[bytes] | None
) -> threading.Thread:
    assert stream is not None
    thread = threading.Thread(target=target, args=(stream,), daemon=True)
    thread.start()
    return thread


def run_tool(
    argv: Sequence[str],
    *,
    timeout_s: float,
    memory_limit_bytes: int | None,
    capture_stdout: bool = False,
) -> ToolRun:
    """Run ``argv`` to completion within ``timeout_s`` seconds of wall clock.

    Returns the exit status and captured output; a non-zero status is *not* an
    exception here because callers map it to a rejection or a processing error.
    Raises :class:`MediaTimeout` when the limit is hit (the process group is
    killed first) and :class:`MediaProcessingError` if the tool cannot start or
    floods stdout.
    """
    proc = _spawn(argv, capture_stdout)
    err, out = _StderrCollector(), _StdoutCollector(STDOUT_LIMIT)
    try:
        _limit_memory(proc.pid, memory_limit_bytes)
        readers = [_start_reader(err.drain, proc.stderr)]
        if capture_stdout:
            readers.append(_start_reader(out.drain, proc.stdout))
        try:
            returncode = _wait(proc, timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            _join(readers)
            summary = summarise_stderr(err.problems or err.tail)
            raise MediaTimeout(
                f"{_tool_name(argv)} exceeded the {timeout_s:g} s time limit and was killed"
                + (f"; last output:\n{summary}" if summary else "")
            ) from None
        _join(readers)
    finally:
        _kill_group(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if out.overflow:
        raise MediaProcessingError(f"{_tool_name(argv)} wrote more than {STDOUT_LIMIT} bytes")
    return ToolRun(returncode, b"".join(out.chunks), tuple(err.tail), tuple(err.problems))


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """``proc.wait(timeout_s)`` that returns as soon as the child exits.

    ``Popen.wait`` with a timeout polls, sleeping up to 50 ms between looks, which
    added tens of milliseconds to every ffprobe and ffmpeg run. A pidfd becomes
    readable the moment the child exits (Linux 5.3+); elsewhere the polling
    ``wait`` remains. Raises ``subprocess.TimeoutExpired`` like ``Popen.wait``.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux, an old kernel, or already reaped
        return proc.wait(timeout=timeout_s)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout_s)
    finally:
        os.close(pidfd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout_s)
    return proc.wait()


def _join(threads: Iterable[threading.Thread]) -> None:
    """Wait for the pipe readers; they end at EOF once the process has exited."""
    for thread in threads:
        thread.join(timeout=10)


def _tool_name(argv: Sequence[str]) -> str:
    return Path(argv[0]).name


def _normalise(line: str) -> str:
    """Drop pointer addresses so identical messages from different contexts dedupe."""
    return _ADDRESS.sub("", line).strip()


def summarise_stderr(lines: Iterable[str], limit: int = DETAIL_LIMIT) -> str:
    """Deduplicate ``lines`` and keep the most recent ones within ``limit`` chars.

    Repeated messages (a decoder complaining once per frame) collapse into one
    line with a count, ordered by their last occurrence, because the last
    distinct errors are the ones that explain why the tool stopped.
    """
    counts: dict[str, int] = {}
    for raw in lines:
        line = _normalise(raw)
        if not line:
            continue
        counts[line] = counts.pop(line, 0) + 1
    rendered = [f"{line} (x{n})" if n > 1 else line for line, n in counts.items()]
    kept: list[str] = []
    size = 0
    for line in reversed(rendered):
        line = line[: limit // 2]
        if size + len(line) + 1 > limit:
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(reversed(kept))
