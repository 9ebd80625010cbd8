"""How an untrusted file is handed to ffmpeg and ffprobe.

Every invocation opens the input the same way, defined once here:

* ``-protocol_whitelist file``: the demuxer may open nothing but local files
  through the ``file`` protocol -- no ``http``, ``tcp``, ``concat:``,
  ``subfile``, ``data:`` and so on, even if something inside the media asks.
* ``-f <demuxer>``: the sniffed audio demuxer (see :mod:`pipelines.sniff`), so
  ffmpeg never auto-detects a playlist, concat list or image sequence.
* The MOV/MP4 demuxer gets ``enable_drefs=0`` and ``use_absolute_path=0``
  spelled out: MP4 "data references" can point at other files, and these are
  the switches that would let ffmpeg follow them.
* The URL is ``file:<absolute path>``, so a name that happens to contain a
  colon can never be read as another protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

PROTOCOL_WHITELIST: Final = "file"
_DEMUXER_OPTIONS: Final[dict[str, dict[str, str]]] = {
    "mov": {"enable_drefs": "0", "use_absolute_path": "0"},
}


def input_options(demuxer: str) -> dict[str, str]:
    """Input options (name without dash -> value) pinning ``demuxer``."""
    return {
        "f": demuxer,
        "protocol_whitelist": PROTOCOL_WHITELIST,
        **_DEMUXER_OPTIONS.get(demuxer, {}),
    }


def input_args(demuxer: str) -> list[str]:
    """:func:`input_options` as command-line arguments."""
    args: list[str] = []
    for name, value in input_options(demuxer).items():
        args += [f"-{name}", value]
    return args


def file_url(path: Path) -> str:
    """An explicit ``file:`` URL for ``path``."""
    return f"file:{path.resolve()}"
