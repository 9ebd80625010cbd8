"""Real music for the benchmarks: Debian game-soundtrack packages, fetched once.

``apt-get download`` fetches the ``.deb`` (no root install, no maintainer
scripts), ``dpkg -x`` unpacks it, both under ``var/bench/corpus`` (the
git-ignored data directory). Later calls find the unpacked tree and do no
network or package work. Layout::

    var/bench/corpus/debs/<package>_<version>_all.deb
    var/bench/corpus/x/<package>_<version>_all/...   (the unpacked tree)

Packages used so far: ``drascula-music`` (31 Ogg Vorbis tracks, 36 MB) and
``wesnoth-1.16-music`` (150 MB).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

ROOT = Path("var/bench/corpus")
DEFAULT_PACKAGE = "drascula-music"


def corpus_files(
    package: str = DEFAULT_PACKAGE,
    *,
    root: Path = ROOT,
    suffixes: Iterable[str] = (".ogg",),
) -> list[Path]:
    """Distinct audio files shipped by ``package``, downloading it on first use.

    Symlinks are resolved and duplicates dropped; links that lead outside the
    unpacked tree (absolute links into a system the package is not installed
    on) are ignored. The order is stable (sorted by path).
    """
    tree = unpacked(package, root=root)
    wanted = {s.lower() for s in suffixes}
    found: set[Path] = set()
    for path in tree.rglob("*"):
        if path.suffix.lower() not in wanted:
            continue
        real = path.resolve()
        if real.is_file() and real.is_relative_to(tree.resolve()):
            found.add(real)
    return sorted(found)


def unpacked(package: str, *, root: Path = ROOT) -> Path:
    """The directory ``package`` is unpacked into; fetched and unpacked if missing."""
    deb = _deb(package, root / "debs")
    target = root / "x" / deb.stem
    if not target.is_dir():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(deb), str(partial)], check=True)
        partial.rename(target)  # atomic: an interrupted unpack is never mistaken for done
    return target


def _deb(package: str, debs: Path) -> Path:
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    debs.mkdir(parents=True, exist_ok=True)
    staging = debs / f".download-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _apt_download(package, staging)
        fetched = sorted(staging.glob(f"{package}_*.deb"))
        if not fetched:
            raise RuntimeError(f"apt-get download {package} produced no .deb")
        return fetched[-1].rename(debs / fetched[-1].name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _apt_download(package: str, into: Path) -> None:
    """``apt-get download``, refreshing the package lists once if the package is unknown."""
    command = ["apt-get", "download", "-q", package]
    if subprocess.run(command, cwd=into, check=False).returncode == 0:
        return
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(command, cwd=into, check=True)
