"""The benchmark's music: every distinct track of Debian game-soundtrack packages.

Fetched once by the shared ``bench.corpus`` fetcher into var/bench/corpus.
Files are de-duplicated by content (the same Ogg can ship twice).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.corpus import corpus_files

PACKAGES = ("drascula-music", "wesnoth-1.16-music")


def unique_tracks(packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    """Every distinct audio file of ``packages``, in a stable order."""
    seen: dict[str, Path] = {}
    for package in packages:
        for path in corpus_files(package):
            digest = hashlib.sha1(path.read_bytes()).hexdigest()  # noqa: S324 - dedup only
            seen.setdefault(digest, path)
    return sorted(seen.values(), key=lambda p: (p.parent.name, p.name))
