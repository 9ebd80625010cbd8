"""Identify an upload's real format from its first bytes, in pure Python.

Why sniff ourselves instead of letting ffmpeg probe: ffmpeg's probing considers
every demuxer it was built with, including ones that follow references to
other files or URLs (HLS playlists, ``concat`` lists, ``subfile``, image
sequences). We decide the format from magic bytes, refuse anything outside the
allowlist, and then *pin* ffprobe/ffmpeg to the one audio demuxer we chose
(``-f <demuxer>``), so a playlist renamed ``.mp3`` is never interpreted as a
playlist. The file name and the client's Content-Type are ignored.

Accepted: MP3 (optionally behind ID3v2 tags), AAC in ADTS, AAC in an ISO-BMFF
(MP4/M4A) file that starts with an ``ftyp`` box, WAV (RIFF/RF64), FLAC, Ogg
whose first stream is Vorbis or Opus, AIFF/AIFF-C.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from pipelines.errors import FORMAT_CHECK_FAILED, MediaRejected

HEAD_BYTES: Final = 64 * 1024
MAX_ID3_TAGS: Final = 4

PCM_LE: Final = frozenset(
    {"pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_f64le"}
)
# AIFF is big-endian PCM; AIFF-C "sowt" files carry little-endian 16-bit.
PCM_BE: Final = frozenset(
    {"pcm_s8", "pcm_s16be", "pcm_s24be", "pcm_s32be", "pcm_f32be", "pcm_f64be", "pcm_s16le"}
)


@dataclass(frozen=True)
class Sniffed:
    """The demuxer to pin and the codecs acceptable inside it."""

    demuxer: str  # value for ``-f``
    label: str  # human-readable format name for error details
    format_name: str  # what ffprobe reports as format_name for this demuxer
    codecs: frozenset[str]  # codec_name values accepted for the audio stream


MP3: Final = Sniffed("mp3", "MP3", "mp3", frozenset({"mp3"}))
ADTS: Final = Sniffed("aac", "AAC (ADTS)", "aac", frozenset({"aac"}))
MP4: Final = Sniffed("mov", "MP4/M4A", "mov,mp4,m4a,3gp,3g2,mj2", frozenset({"aac"}))
WAV: Final = Sniffed("wav", "WAV", "wav", PCM_LE)
FLAC: Final = Sniffed("flac", "FLAC", "flac", frozenset({"flac"}))
OGG_VORBIS: Final = Sniffed("ogg", "Ogg Vorbis", "ogg", frozenset({"vorbis"}))
OGG_OPUS: Final = Sniffed("ogg", "Ogg Opus", "ogg", frozenset({"opus"}))
AIFF: Final = Sniffed("aiff", "AIFF", "aiff", PCM_BE)

# Signatures we refuse, so the detail can say what the file looked like.
_KNOWN_OTHERS: Final[tuple[tuple[bytes, str], ...]] = (
    (b"#EXTM3U", "an M3U/HLS playlist"),
    (b"ffconcat", "an ffconcat list"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1a\x45\xdf\xa3", "a Matroska/WebM file"),
    (b"FLV", "a Flash video"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"[playlist]", "a PLS playlist"),
    (b"<", "an XML/HTML document"),
)
_IMAGE_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
)

# MPEG audio Layer III tables: kbit/s by bitrate index, Hz by sample-rate index.
_MP3_BITRATES: Final = {
    "1": (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    "2": (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES: Final = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_ADTS_RATES: Final = 13  # valid sampling_frequency_index values are 0..12

_FrameLength = Callable[[bytes, int], int | None]


def reject(detail: str) -> MediaRejected:
    """A format rejection with the documented reason."""
    return MediaRejected(FORMAT_CHECK_FAILED, detail)


def sniff_file(path: Path) -> Sniffed:
    """Return the pinned demuxer for ``path`` or raise :class:`MediaRejected`.

    ID3v2 tags are skipped (ffmpeg skips them for every demuxer) and the bytes
    behind them are sniffed again, so an ID3 header cannot smuggle in text.
    """
    with path.open("rb") as fh:
        offset = 0
        for _ in range(MAX_ID3_TAGS + 1):
            head = _read_at(fh, offset, HEAD_BYTES)
            tag_size = _id3v2_size(head)
            if tag_size is None:
                return _identify(head, after_id3=offset > 0)
            offset += tag_size
    raise reject("too many stacked ID3v2 tags")


def _read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def _id3v2_size(head: bytes) -> int | None:
    """Total size of an ID3v2 tag at the start of ``head``, or None if there is none."""
    if len(head) < 10 or head[:3] != b"ID3":
        return None
    major, flags, size_bytes = head[3], head[5], head[6:10]
    if major == 0xFF or any(b & 0x80 for b in size_bytes):
        raise reject("malformed ID3v2 tag header")
    size = 0
    for b in size_bytes:
        size = (size << 7) | b
    footer = 10 if flags & 0x10 else 0
    return 10 + size + footer


def _identify(head: bytes, *, after_id3: bool) -> Sniffed:
    if not head:
        raise reject("no audio data" + (" after the ID3 tag" if after_id3 else ""))
    for probe in (_container_magic, _ogg, _mpeg_stream):
        found = probe(head, after_id3)
        if found is not None:
            return found
    raise reject(_describe_unknown(head))


def _container_magic(head: bytes, _after_id3: bool) -> Sniffed | None:
    if head[:4] == b"fLaC":
        return FLAC
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return WAV
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return AIFF
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            raise reject(f"ISO-BMFF brand {brand.decode('latin-1')!r} is an image format")
        return MP4
    return None


def _ogg(head: bytes, _after_id3: bool) -> Sniffed | None:
    """Ogg: look at the first packet of the first page to name the codec."""
    if head[:4] != b"OggS":
        return None
    if len(head) < 28 or head[4] != 0:
        raise reject("malformed Ogg page header")
    first_packet = head[27 + head[26] :]
    if first_packet.startswith(b"\x01vorbis"):
        return OGG_VORBIS
    if first_packet.startswith(b"OpusHead"):
        return OGG_OPUS
    raise reject("Ogg file whose first stream is neither Vorbis nor Opus")


def _mpeg_stream(head: bytes, after_id3: bool) -> Sniffed | None:
    """MP3 or ADTS: two consecutive valid frame headers at the start.

    Zero padding is tolerated after an ID3 tag (taggers pad); otherwise the
    first frame must be at offset 0. Two chained frames make a chance match in
    random or image bytes practically impossible.
    """
    start = len(head) - len(head.lstrip(b"\x00")) if after_id3 else 0
    if _chained(head, start, _mp3_frame_length):
        return MP3
    if _chained(head, start, _adts_frame_length):
        return ADTS
    return None


def _chained(head: bytes, start: int, frame_length: _FrameLength) -> bool:
    first = frame_length(head, start)
    if first is None:
        return False
    second = start + first
    if second + 4 > len(head):
        # A single frame is all there is: far below any accepted duration,
        # let ffprobe and the duration check produce the precise error.
        return second >= len(head)
    return frame_length(head, second) is not None


def _mp3_frame_length(head: bytes, pos: int) -> int | None:
    """Length of the MPEG-1/2/2.5 Layer III frame whose header is at ``pos``."""
    if pos + 4 > len(head):
        return None
    b0, b1, b2 = head[pos], head[pos + 1], head[pos + 2]
    if b0 != 0xFF or (b1 & 0xE0) != 0xE0:
        return None
    version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    kbps = _MP3_BITRATES["1" if version == 3 else "2"][bitrate_index]
    rate = _MP3_RATES[version][rate_index]
    coefficient = 144 if version == 3 else 72
    return coefficient * kbps * 1000 // rate + padding


def _adts_frame_length(head: bytes, pos: int) -> int | None:
    """Length of the ADTS frame whose header is at ``pos``."""
    if pos + 7 > len(head):
        return None
    b = head[pos : pos + 7]
    if b[0] != 0xFF or (b[1] & 0xF6) != 0xF0 or (b[2] >> 2) & 0xF >= _ADTS_RATES:
        return None
    length = ((b[3] & 0x03) << 11) | (b[4] << 3) | (b[5] >> 5)
    header = 7 if b[1] & 1 else 9
    return length if length > header else None


def _describe_unknown(head: bytes) -> str:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    for magic, what in _KNOWN_OTHERS:
        if text.startswith(magic):
            return f"content is {what}, not an accepted audio format"
    if head[:4] == b"RIFF":
        return f"RIFF {head[8:12].decode('latin-1')!r} file, not WAVE audio"
    return "unrecognised content: not MP3, AAC/M4A, WAV, FLAC, Ogg Vorbis, Opus or AIFF"
