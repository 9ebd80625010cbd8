"""``soundkit catalog add|list|remove`` and ``soundkit identify``, as an operator runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from soundkit.cli import main
from soundkit.settings import Settings
from tests.music import melody, mp3_64k_clip, write


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return {"SOUNDKIT_VAR_DIR": str(settings.var_dir), "DATABASE_URL": settings.database_url,
            "SOUNDKIT_SECRET_KEY": settings.secret_key}


def run(env: dict[str, str], *args: str) -> tuple[int, Any, str]:
    """Exit code, the JSON printed on stdout (if any) and everything shown."""
    result = CliRunner().invoke(main, list(args), env=env)
    out = json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else None
    return result.exit_code, out, result.output


@pytest.fixture(scope="module")
def songs() -> dict[str, np.ndarray]:
    return {"Blue Hour": melody(501, 20.0), "Paper Boats": melody(502, 20.0)}


@pytest.fixture
def folder(tmp_path: Path, songs: dict[str, np.ndarray]) -> Path:
    """An album folder as operators get them: audio, a sub-folder, and things that are not."""
    root = tmp_path / "album"
    (root / "disc 2").mkdir(parents=True)
    (root / ".trash").mkdir()
    write(songs["Blue Hour"], root / "Blue Hour.flac")
    write(songs["Paper Boats"], root / "disc 2" / "Paper Boats.ogg", "-c:a", "libvorbis")
    write(np.zeros(6 * 22050, np.float32), root / "Silence.wav")  # decodes, but no landmarks
    (root / "Broken.mp3").write_bytes(b"not audio at all\n" * 200)
    (root / "artwork").mkdir()
    (root / "artwork" / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 not audio")
    (root / "notes.txt").write_text("liner notes")
    shutil.copy(root / "Blue Hour.flac", root / ".trash" / "old.flac")
    return root


def test_adding_a_folder_reports_each_file_and_keeps_going(
        env: dict[str, str], folder: Path) -> None:
    code, out, _ = run(env, "catalog", "add", str(folder), "--rights-holder", "Tidewater Music")
    assert code == 1  # some files failed
    assert (out["added"], out["skipped"], out["failed"]) == (2, 0, 2)
    assert sorted(f["title"] for f in out["added_files"]) == ["Blue Hour", "Paper Boats"]
    assert all(f["hashes"] > 100 and f["duration_s"] == pytest.approx(20.0, abs=0.1)
               for f in out["added_files"])
    failures = {Path(f["path"]).name: f["reason"] for f in out["failed_files"]}
    assert failures == {"Broken.mp3": "file_format_check_failed",
                        "Silence.wav": "no_fingerprint"}

    # Again, plus the same track under another name: nothing new is registered.
    copy = folder.parent / "Blue Hour (copy).flac"
    shutil.copy(folder / "Blue Hour.flac", copy)
    code, out, _ = run(env, "catalog", "add", str(folder / "Blue Hour.flac"), str(copy),
                       str(folder / "disc 2"), "--rights-holder", "Tidewater Music")
    assert code == 0
    assert (out["added"], out["skipped"], out["failed"]) == (0, 3, 0)
    assert len({f["catalog_track_id"] for f in out["skipped_files"]}) == 2

    code, listed, _ = run(env, "catalog", "list")
    assert code == 0
    assert [(t["title"], t["rights_holder"], t["source_name"]) for t in listed] == [
        ("Blue Hour", "Tidewater Music", "Blue Hour.flac"),
        ("Paper Boats", "Tidewater Music", "Paper Boats.ogg")]
    assert all(t["hashes"] > 100 and len(t["sha256"]) == 64 for t in listed)


def test_identify_finds_a_degraded_clip_and_nothing_for_other_music(
        env: dict[str, str], folder: Path, songs: dict[str, np.ndarray], tmp_path: Path) -> None:
    run(env, "catalog", "add", str(folder), "--rights-holder", "Tidewater Music")
    code, listed, _ = run(env, "catalog", "list")
    ids = {t["title"]: t["id"] for t in listed}

    clip = mp3_64k_clip(songs["Paper Boats"], tmp_path / "clip.mp3", 5.5, 8.0)
    code, found, _ = run(env, "identify", str(clip))
    assert code == 0
    assert [(m["kind"], m["id"], m["title"]) for m in found] == [
        ("catalog", ids["Paper Boats"], "Paper Boats")]
    assert found[0]["score"] > 6 and found[0]["offset_s"] == pytest.approx(5.5, abs=0.1)

    code, found, _ = run(env, "identify", str(write(melody(503, 10.0), tmp_path / "new.wav")))
    assert (code, found) == (0, [])

    code, removed, _ = run(env, "catalog", "remove", str(ids["Paper Boats"]))
    assert code == 0 and removed == {"removed": ids["Paper Boats"], "title": "Paper Boats"}
    code, found, _ = run(env, "identify", str(clip))
    assert (code, found) == (0, [])
    code, _, shown = run(env, "catalog", "remove", str(ids["Paper Boats"]))
    assert code == 1 and f"no catalog track {ids['Paper Boats']}" in shown


@pytest.mark.parametrize(("args", "message"), [
    (["catalog", "add", "{folder}/notes.txt", "--rights-holder", " "], "--rights-holder"),
    (["catalog", "add", "{folder}/artwork", "--rights-holder", "X"], "no audio files"),
    (["catalog", "add", "{folder}/Blue Hour.flac"], "--rights-holder"),
    (["identify", "{folder}/Broken.mp3"], "file_format_check_failed"),
    (["identify", "{folder}/missing.wav"], "does not exist"),
])
def test_bad_input_gets_a_clear_error(env: dict[str, str], folder: Path, args: list[str],
                                      message: str) -> None:
    code, _, shown = run(env, *[a.format(folder=folder) for a in args])
    assert code != 0
    assert "Error" in shown and message in shown
