"""Audio fingerprinting: find a clip of a known track, even re-encoded, noisy or sped up.

Pure engine: mono PCM arrays in, hashes and matches out.

    fp = extract(pcm, sample_rate)                  # a reference, to index
    index.add(track_id, fp)
    matches = match(extract(clip, sr, query=True), index)   # [] means "no match"

Design, in short (details in ``landmarks`` and ``match``):

* 11025 Hz (the pipeline's analysis PCM, no resampling), STFT 1024/256, spectral
  peaks thinned to a fixed density with a sliding window, placed between bins
  and frames by parabolic fits.
* Hashes of peak *triplets*: two pitch intervals (semitones) and the ratio of
  the two time gaps, which do not change when audio is sped up, slowed down or
  transposed, plus the anchor's coarse pitch, the triplet's coarse time span and
  the peaks' loudness order.  Queries probe the neighbouring bin of a field that
  lies near a bin edge.
* Matching: hits grouped by track, the best candidates voted over a grid of
  speeds (±6 %) and offsets; the score is a significance (-log10 chance) with a
  rejection threshold, ``SCORE_THRESHOLD``.

Storage: an index is rows ``(hash, track_id, t)``; in SQL a table
``(hash integer, track_id integer, t integer)`` with a b-tree on ``hash``.
Hashes are below 2**28 (``HASH_LIMIT``), so they fit a signed 32-bit integer as
they are; ``t`` counts frames of ``FRAME_SECONDS``.  References make about
1,250 rows per minute of audio (15 kB of row data at 12 bytes a row).
"""

from pipelines.fingerprint.errors import FingerprintError, InvalidAudioError
from pipelines.fingerprint.index import MAX_POSTINGS, Hits, Index, InMemoryIndex
from pipelines.fingerprint.landmarks import (
    ENGINE_SAMPLE_RATE,
    FRAME_SECONDS,
    HASH_LIMIT,
    Extractor,
    Fingerprint,
    extract,
)
from pipelines.fingerprint.match import MAX_SPEED_CHANGE, SCORE_THRESHOLD, Match, match

__all__ = [
    "ENGINE_SAMPLE_RATE",
    "FRAME_SECONDS",
    "HASH_LIMIT",
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
