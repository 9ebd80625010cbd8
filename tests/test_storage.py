"""One contract, two object stores: the local directory and S3 (moto's server over HTTP)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from soundkit.storage import (
    PART_SIZE,
    LimitedHashingWriter,
    LocalStore,
    ObjectStore,
    ObjectTooLarge,
    S3Store,
    StorageUnavailable,
    check_key,
    verify_media_signature,
)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "objects", "http://127.0.0.1:8000", "k" * 40)
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    request.getfixturevalue("aws_env")
    s3 = S3Store(f"bucket-{uuid.uuid4().hex[:8]}", "pre/fix", endpoint_url=endpoint)
    s3.ensure_bucket()
    yield s3


def test_put_download_list_delete(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"hello")
    store.put_file("sounds/x/a.bin", source, "application/octet-stream")
    assert store.exists("sounds/x/a.bin")
    assert store.list_keys("sounds/") == ["sounds/x/a.bin"]
    store.download("sounds/x/a.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"hello"
    store.delete("sounds/x/a.bin")
    store.delete("sounds/x/a.bin")  # deleting twice is fine: effects may be replayed
    assert not store.exists("sounds/x/a.bin")
    with pytest.raises(FileNotFoundError):
        store.download("sounds/x/a.bin", tmp_path / "missing.bin")


def test_streaming_writer_spans_several_parts(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(PART_SIZE * 2 + 12345)
    writer = LimitedHashingWriter(store.open_writer("incoming/big", "audio/wav"), len(data))
    for start in range(0, len(data), 1 << 20):
        writer.write(data[start:start + (1 << 20)])
    writer.commit()
    store.download("incoming/big", tmp_path / "big")
    assert (tmp_path / "big").read_bytes() == data
    assert writer.bytes_written == len(data)


def test_writer_over_the_limit_stores_nothing(store: ObjectStore) -> None:
    writer = LimitedHashingWriter(store.open_writer("incoming/too-big", "audio/wav"),
                                  PART_SIZE + 10)
    with pytest.raises(ObjectTooLarge):
        for _ in range(3):
            writer.write(b"x" * (PART_SIZE // 2 + 1))
    writer.abort()
    assert not store.exists("incoming/too-big")
    assert store.list_keys("incoming/") == []


def test_signed_url_serves_the_object_and_expires(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "p.m4a"
    source.write_bytes(b"playback bytes")
    store.put_file("sounds/s/playback.m4a", source, "audio/mp4")
    url = store.signed_url("sounds/s/playback.m4a", 60, "audio/mp4")
    if isinstance(store, S3Store):
        response = requests.get(url, timeout=10)
        assert response.content == b"playback bytes"
        assert response.headers["Content-Type"] == "audio/mp4"
    else:
        assert isinstance(store, LocalStore)
        query = dict(p.split("=") for p in url.split("?")[1].split("&"))
        assert verify_media_signature(store.secret, "sounds/s/playback.m4a",
                                      query["expires"], query["sig"])
        assert not verify_media_signature(store.secret, "sounds/s/other.m4a",
                                          query["expires"], query["sig"])
        assert not verify_media_signature(store.secret, "sounds/s/playback.m4a", "1",
                                          query["sig"])


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/.."])
def test_keys_cannot_escape_the_store(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)


def test_unreachable_s3_is_a_transient_error(aws_env: dict[str, str], tmp_path: Path) -> None:
    from tests.integration.stack import free_port

    s3 = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")
    s3.client.meta.config.retries = {"max_attempts": 0}
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageUnavailable):
        s3.put_file("k", tmp_path / "f", "text/plain")
