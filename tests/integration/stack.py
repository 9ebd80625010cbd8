"""Running the real processes for integration tests: a worker subprocess, a private Redis."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class WorkerProcess:
    """``celery -A worker.app worker`` in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *, beat: bool = False,
                 concurrency: int = 1) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "worker.app", "worker",
                "-Q", "ingest,webhooks,maintenance", "-c", str(concurrency),
                "-n", f"test{free_port()}@%h", "--without-gossip", "--without-mingle",
                "--loglevel", "INFO"]
        if beat:
            argv += ["-B", "-s", str(log_path.with_suffix(".beat"))]
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        wait_for(lambda: "ready." in self.output() or self.proc.poll() is not None,
                 timeout, "the worker to start")
        assert self.proc.poll() is None, self.output()[-3000:]

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole process group: the worker dies without any cleanup."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@contextmanager
def worker(env: dict[str, str], log_path: Path, **kwargs: Any) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(env, log_path, **kwargs)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


class PrivateRedis:
    """A redis-server of the test's own, so it can be stopped and restarted freely."""

    def __init__(self, workdir: Path, *, appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        assert redis_server, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [redis_server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            except OSError:
                return False
            return True

        wait_for(up, 10, "redis-server to start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def upload_status(client: FlaskClient, token: str, upload_id: str) -> dict[str, Any]:
    response = client.post("/v2/sound/status/fetch/", json={"upload_id": upload_id},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_json()
    data: dict[str, Any] = response.get_json()["data"]
    return data


def wait_final(client: FlaskClient, token: str, upload_id: str, timeout: float = 90,
               proc: WorkerProcess | None = None) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        status = upload_status(client, token, upload_id)
        return status if status["status"] in {"IN_LIBRARY", "FAILED"} else None

    try:
        found: dict[str, Any] = wait_for(final, timeout, f"upload {upload_id} to finish")
    except AssertionError:
        if proc is not None:
            print(proc.output()[-5000:])
        raise
    return found
