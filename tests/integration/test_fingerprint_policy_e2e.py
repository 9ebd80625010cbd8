"""Each fingerprint policy outcome, end to end through a real worker process.

One ``celery worker`` (embedded defaults: SQLite, filesystem broker, local store)
serves the whole module; the api runs in-process with its real dispatcher. Every
test uses its own seeded melodies, so the tests do not see each other's sounds.
Catalog tracks are registered with the real ``soundkit catalog add`` command.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select

from api import create_app
from pipelines.fingerprint import SCORE_THRESHOLD
from soundkit import migrate
from soundkit.cli import main
from soundkit.db import Database
from soundkit.fingerprints import SqlIndex
from soundkit.library import delete_sound
from soundkit.models import FingerprintTrack, Upload
from soundkit.settings import Settings, load_settings
from soundkit.storage import open_store
from tests.conftest import SECRET, World, build_world
from tests.integration.stack import WorkerProcess, wait_final, worker
from tests.music import melody, mp3_64k_clip, write

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    db: Database
    world: World
    app: Flask
    proc: WorkerProcess

    def push(self, path: Path, token: str) -> dict[str, Any]:
        """Upload as an app does and wait for the final status."""
        response = self.app.test_client().post(
            "/v2/sound/upload/", headers={"Authorization": f"Bearer {token}"},
            data={"sound_file": (io.BytesIO(path.read_bytes()), path.name)},
            content_type="multipart/form-data")
        assert response.status_code == 202, response.get_json()
        upload_id = response.get_json()["data"]["upload_id"]
        return wait_final(self.app.test_client(), token, upload_id, proc=self.proc)

    def upload(self, upload_id: str) -> Upload:
        with self.db.session() as session:
            found = session.get(Upload, upload_id)
            assert found is not None
            return found

    def cli(self, *args: str) -> tuple[int, Any]:
        result = CliRunner().invoke(main, list(args), env=self.env)
        return result.exit_code, json.loads(result.stdout) if result.stdout else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    var_dir = tmp_path_factory.mktemp("fingerprint-e2e") / "var"
    env = {"SOUNDKIT_VAR_DIR": str(var_dir), "SOUNDKIT_SECRET_KEY": SECRET}
    settings = load_settings(env)
    migrate.upgrade(settings.database_url)
    db = Database(settings.database_url)
    world = build_world(db, settings)
    world.new_creator("bob")
    with worker(env, var_dir.parent / "worker.log") as proc:
        yield Stack(env, settings, db, world, create_app(settings), proc)
    db.dispose()


def alice(stack: Stack) -> str:
    return stack.world.token()


def bob(stack: Stack) -> str:
    return stack.world.token(username="bob")


def test_a_degraded_clip_of_a_catalog_track_ends_copyright_match(
        stack: Stack, tmp_path: Path) -> None:
    song = melody(101, 20.0)
    code, added = stack.cli("catalog", "add", str(write(song, tmp_path / "Cold Water.flac")),
                            "--rights-holder", "Northern Records")
    assert code == 0 and added["added"] == 1
    catalog_id = added["added_files"][0]["id"]

    status = stack.push(mp3_64k_clip(song, tmp_path / "my clip.mp3", 7.0), alice(stack))
    assert (status["status"], status["fail_reason"]) == ("FAILED", "copyright_match")
    assert status["sound_id"] is None
    detail = stack.upload(status["upload_id"]).match_detail
    assert detail is not None
    assert detail["catalog_track_id"] == catalog_id
    assert (detail["title"], detail["rights_holder"]) == ("Cold Water", "Northern Records")
    assert detail["score"] >= SCORE_THRESHOLD
    assert detail["offset_s"] == pytest.approx(7.0, abs=0.1)


def test_an_unmatched_sound_reaches_the_library_and_is_indexed(
        stack: Stack, tmp_path: Path) -> None:
    song = melody(202, 16.0)
    status = stack.push(write(song, tmp_path / "Sunrise.flac"), alice(stack))
    assert status["status"] == "IN_LIBRARY", stack.upload(status["upload_id"]).error_detail
    sound_id = status["sound_id"]
    with stack.db.session() as session:
        track = session.scalar(select(FingerprintTrack)
                               .where(FingerprintTrack.sound_id == sound_id))
        assert track is not None and track.hash_count > 100
        rows = SqlIndex(session).posting_count(track.id)
        assert rows == track.hash_count
    code, found = stack.cli("identify", str(mp3_64k_clip(song, tmp_path / "q.mp3", 6.0, 8.0)))
    assert code == 0
    assert [(m["kind"], m["id"], m["title"]) for m in found] == [("sound", sound_id, "Sunrise")]
    assert found[0]["offset_s"] == pytest.approx(6.0, abs=0.1)


def test_another_creators_copy_is_a_duplicate_until_the_original_is_deleted(
        stack: Stack, tmp_path: Path) -> None:
    song = melody(303, 16.0)
    original = stack.push(write(song, tmp_path / "Original.wav", "-c:a", "pcm_s16le"),
                          alice(stack))
    assert original["status"] == "IN_LIBRARY"

    copy = stack.push(mp3_64k_clip(song, tmp_path / "copy.mp3", 0.0, 16.0), bob(stack))
    assert (copy["status"], copy["fail_reason"]) == ("FAILED", "duplicate_sound")
    assert copy["sound_id"] is None  # another creator's sound is not named to the app
    detail = stack.upload(copy["upload_id"]).match_detail
    assert detail is not None and detail["sound_id"] == original["sound_id"]
    assert detail["rule"] == "duplicate_other"

    with stack.db.session() as session:
        assert delete_sound(session, open_store(stack.settings), original["sound_id"])
    again = stack.push(mp3_64k_clip(song, tmp_path / "again.mp3", 0.0, 16.0), bob(stack))
    assert again["status"] == "IN_LIBRARY"


def test_a_creator_reuploading_their_sound_is_pointed_to_it(
        stack: Stack, tmp_path: Path) -> None:
    song = melody(404, 16.0)
    first = stack.push(write(song, tmp_path / "Late Show.flac"), alice(stack))
    assert first["status"] == "IN_LIBRARY"
    excerpt = stack.push(mp3_64k_clip(song, tmp_path / "excerpt.mp3", 5.0), alice(stack))
    assert (excerpt["status"], excerpt["fail_reason"]) == ("FAILED", "duplicate_sound")
    assert excerpt["sound_id"] == first["sound_id"]
