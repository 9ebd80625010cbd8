"""Magic-byte sniffing on crafted headers: the allowlist and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import FORMAT_CHECK_FAILED, MediaRejected
from pipelines.sniff import (
    ADTS,
    AIFF,
    FLAC,
    MP3,
    MP4,
    OGG_OPUS,
    OGG_VORBIS,
    WAV,
    Sniffed,
    sniff_file,
)

MP3_FRAME = bytes([0xFF, 0xFB, 0x90, 0x00]) + bytes(413)  # MPEG-1 L3 128k 44.1k: 417 bytes


def id3(body_size: int, *, footer: bool = False) -> bytes:
    size = bytes((body_size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    flags = 0x10 if footer else 0
    trailer = bytes(10) if footer else b""
    return b"ID3\x04\x00" + bytes([flags]) + size + bytes(body_size) + trailer


def adts_frame(length: int = 200) -> bytes:
    header = bytes(
        [
            0xFF,
            0xF1,
            (1 << 6) | (4 << 2),
            (2 << 6) | ((length >> 11) & 3),
            (length >> 3) & 0xFF,
            ((length & 7) << 5) | 0x1F,
            0xFC,
        ]
    )
    return header + bytes(length - 7)


def ogg_page(packet: bytes) -> bytes:
    return b"OggS\x00\x02" + bytes(8 + 4 + 4 + 4) + bytes([1, len(packet)]) + packet


def sniff(tmp_path: Path, data: bytes) -> Sniffed:
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    return sniff_file(path)


def refusal(tmp_path: Path, data: bytes) -> str:
    with pytest.raises(MediaRejected) as caught:
        sniff(tmp_path, data)
    assert caught.value.reason == FORMAT_CHECK_FAILED
    return caught.value.detail


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (MP3_FRAME * 3, MP3),
        (id3(300) + MP3_FRAME * 2, MP3),
        (id3(300, footer=True) + MP3_FRAME * 2, MP3),
        (id3(50) + id3(70) + MP3_FRAME * 2, MP3),
        (id3(20) + bytes(100) + MP3_FRAME * 2, MP3),
        (adts_frame() * 3, ADTS),
        (b"fLaC" + bytes(60), FLAC),
        (id3(40) + b"fLaC" + bytes(60), FLAC),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", WAV),
        (b"RF64\xff\xff\xff\xffWAVEds64", WAV),
        (b"FORM\x00\x00\x00\x00AIFFCOMM", AIFF),
        (b"FORM\x00\x00\x00\x00AIFCFVER", AIFF),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00", MP4),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", MP4),
        (ogg_page(b"\x01vorbis" + bytes(23)), OGG_VORBIS),
        (ogg_page(b"OpusHead\x01\x02"), OGG_OPUS),
    ],
)
def test_accepted_signatures(tmp_path: Path, data: bytes, expected: Sniffed) -> None:
    assert sniff(tmp_path, data) == expected


@pytest.mark.parametrize(
    ("data", "mentions"),
    [
        (b"#EXTM3U\n#EXTINF:8,\n/etc/passwd\n", "playlist"),
        (b"\xef\xbb\xbf  #EXTM3U\n", "playlist"),
        (b"ffconcat version 1.0\nfile 'x.wav'\n", "ffconcat"),
        (id3(30) + b"#EXTM3U\n/secret.wav\n", "playlist"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "PNG image"),
        (b"\xff\xd8\xff\xe0" + bytes(40), "JPEG image"),
        (b"GIF89a" + bytes(40), "GIF image"),
        (b"\x1a\x45\xdf\xa3" + bytes(40), "Matroska"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "'AVI '"),
        (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00", "image"),
        (b"<?xml version='1.0'?><MPD/>", "XML"),
        (ogg_page(b"\x7fFLAC\x01\x00"), "neither Vorbis nor Opus"),
        (ogg_page(b"\x80theora" + bytes(20)), "neither Vorbis nor Opus"),
        (id3(10), "no audio data after the ID3 tag"),
        (b"ID3\x04\x00\x00\x80\x00\x00\x00", "malformed ID3v2"),
        (bytes(10) + MP3_FRAME * 2, "unrecognised"),  # audio must start the file
        (MP3_FRAME[:4] + b"garbage" * 100, "unrecognised"),  # one header is not a stream
        (b"hello, world", "unrecognised"),
    ],
)
def test_refused_signatures(tmp_path: Path, data: bytes, mentions: str) -> None:
    assert mentions in refusal(tmp_path, data)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(20240601)
    for _ in range(50):
        data = rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes()
        if data[:3] == b"ID3" or data[:4] in (b"fLaC", b"OggS", b"RIFF", b"FORM"):
            continue
        assert refusal(tmp_path, data)
