"""The object store: one interface, a local-directory and an S3 implementation.

Vendor errors are translated at this edge: a missing key is ``FileNotFoundError``
everywhere, and anything that might succeed on a second try (network, throttling,
5xx) is :class:`StorageUnavailable`, which the worker retries. Writers stream: an
upload of hundreds of megabytes never sits in memory (S3 gets a multipart upload
in fixed-size parts; the local store writes to a temporary file and renames it).
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import time
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote, urlencode, urlparse

from soundkit.settings import Settings

PART_SIZE = 8 * 1024 * 1024  # S3's minimum part is 5 MiB; 8 MiB bounds memory per upload


class StorageUnavailable(RuntimeError):
    """The store could not be reached or refused for a transient reason: retry later."""


class ObjectTooLarge(Exception):
    """More bytes arrived than the caller allowed; nothing was stored."""


class ObjectWriter(Protocol):
    """A streaming write of one object: ``write`` chunks, then ``commit`` or ``abort``."""

    bytes_written: int

    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class ObjectStore(Protocol):
    """What every storage backend offers."""

    def open_writer(self, key: str, content_type: str) -> ObjectWriter: ...
    def put_file(self, key: str, path: Path, content_type: str) -> None: ...
    def download(self, key: str, dest: Path) -> None: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def signed_url(self, key: str, ttl_s: int, content_type: str | None = None) -> str: ...


def check_key(key: str) -> str:
    """Keys are relative, slash-separated and never climb out of the store."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in {"", ".", ".."} for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


class LimitedHashingWriter:
    """Wraps a writer: counts bytes, computes SHA-256, and stops at a size limit."""

    def __init__(self, inner: ObjectWriter, max_bytes: int) -> None:
        self.inner = inner
        self.max_bytes = max_bytes
        self.sha256 = hashlib.sha256()
        self.bytes_written = 0

    def write(self, chunk: bytes) -> None:
        self.bytes_written += len(chunk)
        if self.bytes_written > self.max_bytes:
            raise ObjectTooLarge(f"more than {self.max_bytes} bytes")
        self.sha256.update(chunk)
        self.inner.write(chunk)

    def commit(self) -> None:
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


# --- local directory -------------------------------------------------------------------


def media_signature(secret: str, key: str, expires: int) -> str:
    """HMAC that authorises ``GET /media/<key>`` until ``expires`` (unix seconds)."""
    message = f"{key}\n{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_media_signature(secret: str, key: str, expires: str, signature: str) -> bool:
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(media_signature(secret, key, int(expires)), signature)


class _LocalWriter:
    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = final.with_name(f".{final.name}.{time.monotonic_ns()}.part")
        self.handle: IO[bytes] = self.tmp.open("wb")
        self.bytes_written = 0

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        self.bytes_written += len(chunk)

    def commit(self) -> None:
        self.handle.close()
        self.tmp.replace(self.final)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


class LocalStore:
    """Objects as files under one directory; URLs are signed and served by the api."""

    def __init__(self, root: Path, public_url: str, secret: str) -> None:
        self.root = root
        self.public_url = public_url.rstrip("/")
        self.secret = secret
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def open_writer(self, key: str, content_type: str) -> ObjectWriter:
        return _LocalWriter(self.path(key))

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        writer = _LocalWriter(self.path(key))
        writer.handle.close()
        shutil.copyfile(path, writer.tmp)
        writer.tmp.replace(writer.final)

    def download(self, key: str, dest: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise FileNotFoundError(key)
        shutil.copyfile(source, dest)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(
            str(p.relative_to(self.root)) for p in self.root.rglob("*")
            if p.is_file() and not p.name.startswith(".")
            and str(p.relative_to(self.root)).startswith(prefix))

    def signed_url(self, key: str, ttl_s: int, content_type: str | None = None) -> str:
        expires = int(time.time()) + ttl_s
        query = urlencode({"expires": expires, "sig": media_signature(self.secret, key, expires)})
        return f"{self.public_url}/media/{quote(check_key(key))}?{query}"


# --- S3 ---------------------------------------------------------------------------------


def _translate(error: Exception, key: str) -> Exception:
    """Map botocore's errors onto ours: missing → FileNotFoundError, else transient."""
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in {"NoSuchKey", "404", "NotFound"}:
            return FileNotFoundError(key)
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if status and status < 500 and code not in {"SlowDown", "RequestTimeout"}:
            return RuntimeError(f"S3 refused {key}: {code}")
    return StorageUnavailable(f"S3 unavailable for {key}: {error}")


class _S3Writer:
    """Multipart upload in fixed parts; a small object becomes one PUT."""

    def __init__(self, store: S3Store, key: str, content_type: str) -> None:
        self.store = store
        self.key = key
        self.content_type = content_type
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.bytes_written = 0

    def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        self.bytes_written += len(chunk)
        while len(self.buffer) >= PART_SIZE:
            self._send_part(bytes(self.buffer[:PART_SIZE]))
            del self.buffer[:PART_SIZE]

    def _send_part(self, data: bytes) -> None:
        client, bucket, full_key = self.store.client, self.store.bucket, self.store.full(self.key)
        try:
            if self.upload_id is None:
                self.upload_id = client.create_multipart_upload(
                    Bucket=bucket, Key=full_key, ContentType=self.content_type)["UploadId"]
            number = len(self.parts) + 1
            etag = client.upload_part(Bucket=bucket, Key=full_key, UploadId=self.upload_id,
                                      PartNumber=number, Body=data)["ETag"]
        except Exception as error:
            raise _translate(error, self.key) from error
        self.parts.append({"ETag": etag, "PartNumber": number})

    def commit(self) -> None:
        client, bucket, full_key = self.store.client, self.store.bucket, self.store.full(self.key)
        try:
            if self.upload_id is None:
                client.put_object(Bucket=bucket, Key=full_key, Body=bytes(self.buffer),
                                  ContentType=self.content_type)
                return
            if self.buffer:
                self._send_part(bytes(self.buffer))
                self.buffer.clear()
            client.complete_multipart_upload(
                Bucket=bucket, Key=full_key, UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts})
        except Exception as error:
            raise _translate(error, self.key) from error

    def abort(self) -> None:
        self.buffer.clear()
        if self.upload_id is not None:
            try:
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.store.full(self.key),
                    UploadId=self.upload_id)
            except Exception as error:  # the bucket's lifecycle rule cleans up leftovers
                raise _translate(error, self.key) from error


class S3Store:
    """Objects in an S3 bucket (any S3-compatible endpoint) through boto3."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str = "us-east-1") -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"},
                          connect_timeout=5, read_timeout=60, signature_version="s3v4"))

    def full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (used by setup commands and tests)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception:
            self.client.create_bucket(Bucket=self.bucket)

    def open_writer(self, key: str, content_type: str) -> ObjectWriter:
        return _S3Writer(self, key, content_type)

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self.full(key),
                                    ExtraArgs={"ContentType": content_type})
        except Exception as error:
            raise _translate(error, key) from error

    def download(self, key: str, dest: Path) -> None:
        try:
            self.client.download_file(self.bucket, self.full(key), str(dest))
        except Exception as error:
            raise _translate(error, key) from error

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.full(key))
        except Exception as error:
            raise _translate(error, key) from error

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.full(key))
        except Exception as error:
            translated = _translate(error, key)
            if isinstance(translated, FileNotFoundError):
                return False
            raise translated from error
        return True

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=full_prefix):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except Exception as error:
            raise _translate(error, prefix) from error
        return sorted(keys)

    def signed_url(self, key: str, ttl_s: int, content_type: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.full(key)}
        if content_type:
            params["ResponseContentType"] = content_type
        url: str = self.client.generate_presigned_url("get_object", Params=params,
                                                      ExpiresIn=ttl_s)
        return url


def open_store(settings: Settings) -> ObjectStore:
    """The store ``STORAGE_URL`` names."""
    parsed = urlparse(settings.storage_url)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path, settings.s3_endpoint_url, settings.s3_region)
    return LocalStore(Path(parsed.path), settings.public_url, settings.secret_key)
