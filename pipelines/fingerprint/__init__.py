"""Audio fingerprinting: find a clip of a known track, even re-encoded, noisy or sped up.

Pure engine: mono PCM arrays in, hashes and matches out.

    fp = extract(pcm, sample_rate)                 # reference (to index)
    index.add(track_id, fp)
    matches = match(extract(clip, sr, query=True), index)

See ``extract`` for the hash design and ``match`` for the score.
"""

from pipelines.fingerprint.errors import FingerprintError, InvalidAudioError
from pipelines.fingerprint.index import MAX_POSTINGS, Hits, Index, InMemoryIndex
from pipelines.fingerprint.landmarks import (
    ENGINE_SAMPLE_RATE,
    FRAME_SECONDS,
    Extractor,
    Fingerprint,
    extract,
)
from pipelines.fingerprint.match import MAX_SPEED_CHANGE, SCORE_THRESHOLD, Match, match

__all__ = [
    "ENGINE_SAMPLE_RATE",
    "FRAME_SECONDS",
    "MAX_POSTINGS",
    "MAX_SPEED_CHANGE",
    "SCORE_THRESHOLD",
    "Extractor",
    "Fingerprint",
    "FingerprintError",
    "Hits",
    "InMemoryIndex",
    "Index",
    "InvalidAudioError",
    "Match",
    "extract",
    "match",
]
