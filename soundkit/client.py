"""A small reference client for the Sound Kit API (``soundkit push``).

The body is produced piece by piece (multipart header, the file in chunks, the
trailer) with a known length, so a large file is sent without being read into
memory and the progress bar moves as bytes leave.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

FINAL = {"IN_LIBRARY", "FAILED"}
CHUNK = 256 * 1024


class ClientError(RuntimeError):
    """The API refused or could not be reached; the message says which."""


class MultipartBody:
    """An iterable multipart/form-data body with a length, for streaming uploads."""

    def __init__(self, path: Path, fields: dict[str, str], progress: bool) -> None:
        self.path = path
        self.boundary = "soundkit" + secrets.token_hex(12)
        head = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode() for name, value in fields.items())
        filename = path.name.replace('"', "")
        self.head = head + (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="sound_file"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.size = path.stat().st_size
        self.progress = progress

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        bar = tqdm(total=self.size, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"uploading {self.path.name}", disable=not self.progress)
        with bar, self.path.open("rb") as handle:
            yield self.head
            while chunk := handle.read(CHUNK):
                bar.update(len(chunk))
                yield chunk
            yield self.tail


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        raise ClientError(f"HTTP {response.status_code}: not JSON: {response.text[:200]}") \
            from None
    error = body.get("error") or {}
    if response.status_code >= 400 or error.get("code") not in (None, "ok"):
        raise ClientError(f"HTTP {response.status_code} {error.get('code')}: "
                          f"{error.get('message')} (log_id {error.get('log_id')})")
    data: dict[str, Any] = body.get("data") or {}
    return data


def upload(api: str, token: str, path: Path, *, title: str | None = None,
           idempotency_key: str | None = None, progress: bool = False) -> str:
    fields = {"title": title} if title else {}
    body = MultipartBody(path, fields, progress)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": body.content_type}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    try:
        response = requests.post(f"{api.rstrip('/')}/v2/sound/upload/", data=body,
                                 headers=headers, timeout=(10, 600))
    except requests.RequestException as error:
        raise ClientError(f"cannot reach {api}: {error}") from None
    upload_id: str = _json(response)["upload_id"]
    return upload_id


def status(api: str, token: str, upload_id: str) -> dict[str, Any]:
    try:
        response = requests.post(f"{api.rstrip('/')}/v2/sound/status/fetch/",
                                 json={"upload_id": upload_id},
                                 headers={"Authorization": f"Bearer {token}"}, timeout=30)
    except requests.RequestException as error:
        raise ClientError(f"cannot reach {api}: {error}") from None
    return _json(response)


def wait(api: str, token: str, upload_id: str, *, timeout: float = 900.0,
         interval: float = 0.5) -> dict[str, Any]:
    """Poll until the upload is IN_LIBRARY or FAILED."""
    deadline = time.monotonic() + timeout
    while True:
        current = status(api, token, upload_id)
        if current.get("status") in FINAL:
            return current
        if time.monotonic() > deadline:
            raise ClientError(f"upload {upload_id} still {current.get('status')} "
                              f"after {timeout:.0f} s")
        time.sleep(interval)
