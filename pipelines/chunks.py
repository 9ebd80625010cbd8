"""Truncation check for chunked PCM containers (WAV, AIFF), in pure Python.

PCM has no frame structure, so a cut WAV/AIFF decodes "successfully" to less
audio than its header declares and ffmpeg silently falls back to estimating
the duration from the file size. The header still tells the truth about what
was *meant* to be there: if the sample-data chunk claims more bytes than the
file holds, the upload was truncated. Streaming writers that leave the size
unset (0 or 0xFFFFFFFF) and RF64 files (size kept in ``ds64``) are not judged.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Final, Literal

from pipelines.sniff import AIFF, WAV, Sniffed, reject

_UNSET_SIZES: Final = frozenset({0, 0xFFFFFFFF})
_MAX_CHUNKS: Final = 64


def check_chunks(path: Path, sniffed: Sniffed) -> None:
    """Raise ``file_format_check_failed`` if a WAV/AIFF sample chunk is cut short."""
    if sniffed not in (WAV, AIFF):
        return
    with path.open("rb") as fh:
        if sniffed is WAV and fh.read(4) == b"RF64":
            return
        if sniffed is WAV:
            _walk(fh, path.stat().st_size, b"data", "little")
        else:
            _walk(fh, path.stat().st_size, b"SSND", "big")


def _walk(fh: BinaryIO, file_size: int, data_id: bytes, order: Literal["little", "big"]) -> None:
    offset = 12
    for _ in range(_MAX_CHUNKS):
        fh.seek(offset)
        header = fh.read(8)
        if len(header) < 8:
            raise reject(f"no {data_id.decode()} chunk before the end of the file")
        size = int.from_bytes(header[4:], order)
        if header[:4] == data_id:
            _check_size(size, file_size - offset - 8, data_id)
            return
        offset += 8 + size + (size & 1)
    raise reject(f"no {data_id.decode()} chunk among the first {_MAX_CHUNKS} chunks")


def _check_size(declared: int, present: int, data_id: bytes) -> None:
    if declared not in _UNSET_SIZES and declared > present:
        raise reject(
            f"truncated: the {data_id.decode()} chunk declares {declared} bytes "
            f"but only {present} are present"
        )
