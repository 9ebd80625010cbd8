"""Test audio made on the spot with real ffmpeg: no binary fixtures in the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

#: A few seconds of something music-like: two tones, a beat of noise bursts, vibrato.
MUSIC_GRAPH = (
    "sine=f={f}:r=44100,volume=0.3[a];"
    "sine=f={g}:r=44100,volume=0.2,vibrato=f=5:d=0.3[b];"
    "anoisesrc=c=pink:r=44100:a=0.2,volume='if(lt(mod(t,0.5),0.08),1,0)':eval=frame[c];"
    "[a][b][c]amix=inputs=3:normalize=0"
)

CODECS = {
    ".wav": ["-c:a", "pcm_s16le"],
    ".mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    ".m4a": ["-c:a", "aac", "-b:a", "128k"],
    ".flac": ["-c:a", "flac"],
    ".ogg": ["-c:a", "libvorbis", "-q:a", "3"],
    ".opus": ["-c:a", "libopus", "-b:a", "64k"],
    ".aiff": ["-c:a", "pcm_s16be"],
}


def make_audio(path: Path, seconds: float = 6.0, *, freq: float = 440.0,
               channels: int = 2, extra: list[str] | None = None) -> Path:
    """Write ``seconds`` of music-like audio to ``path`` in the format its suffix names."""
    graph = MUSIC_GRAPH.format(f=freq, g=freq * 1.5)
    layout = "stereo" if channels == 2 else "mono"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-filter_complex",
         f"{graph},atrim=0:{seconds},aformat=sample_fmts=s16:channel_layouts={layout}",
         *CODECS[path.suffix], *(extra or []), str(path)],
        check=True, timeout=60)
    return path
