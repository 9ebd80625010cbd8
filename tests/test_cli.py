"""The ``soundkit`` command line, as an operator and an app developer use it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from werkzeug.serving import make_server

from api import create_app
from soundkit.cli import main
from soundkit.db import Database
from soundkit.models import AuditEntry, Consent, User
from soundkit.queue import Dispatcher
from soundkit.settings import Settings
from soundkit.storage import open_store
from tests.audio import make_audio
from tests.conftest import RecordingDispatcher
from worker import ingest
from worker.runtime import Runtime


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return {"SOUNDKIT_VAR_DIR": str(settings.var_dir), "DATABASE_URL": settings.database_url,
            "SOUNDKIT_SECRET_KEY": settings.secret_key}


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env, input=stdin)
    return result.exit_code, result.output


def test_operator_workflow_creates_user_app_and_audited_token(
        env: dict[str, str], db: Database) -> None:
    code, out = run(env, "db", "upgrade")
    assert code == 0, out
    code, out = run(env, "users", "create", "carol", "--display-name", "Carol C",
                    stdin="a long enough password\n")
    assert code == 0, out
    assert json.loads(out)["username"] == "carol"
    code, out = run(env, "apps", "create", "--name", "Loop Station",
                    "--redirect-uri", "https://loops.example/cb",
                    "--webhook-url", "https://loops.example/hook", "--developer", "Loops Ltd")
    assert code == 0, out
    created = json.loads(out)
    assert created["client_secret"].startswith("sks_")
    assert created["webhook_secret"].startswith("whs_")
    code, out = run(env, "tokens", "issue", "--user", "carol", "--app", created["client_key"],
                    "--scope", "sound.upload")
    assert code == 0, out
    issued = json.loads(out)
    assert issued["scope"] == "user.info.basic,sound.upload"  # the required scope is added
    with db.session() as session:
        assert session.scalars(select(AuditEntry.action)).all() == ["token.issue"]
        consent = session.scalars(select(Consent)).one()
        assert consent.scope == "user.info.basic,sound.upload"
        assert session.scalars(select(User.password_hash)).one() != "a long enough password"


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["users", "create", "Bad Name!"], "a long enough password\n", "username"),
    (["users", "create", "dave"], "short\n", "password"),
    (["apps", "create", "--name", "X", "--redirect-uri", "http://example.com/cb"], None,
     "redirect URI"),
    (["apps", "create", "--name", "X", "--redirect-uri", "https://x.example/cb",
      "--scope", "sound.delete"], None, "unknown scope"),
    (["tokens", "issue", "--user", "nobody", "--app", "nope"], None, "user"),
])
def test_bad_input_gets_a_clear_error(env: dict[str, str], args: list[str],
                                      stdin: str | None, message: str) -> None:
    code, out = run(env, *args, stdin=stdin)
    assert code == 1
    assert "Error:" in out and message in out


def test_invalid_setting_is_named(env: dict[str, str]) -> None:
    code, out = run({**env, "BROKER_URL": "amqp://nope"}, "db", "upgrade")
    assert code == 1
    assert "BROKER_URL" in out


class InlineDispatcher(Dispatcher):
    """Runs the ingest job in a thread when the api wakes it: a worker without a broker."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def wake_upload(self, upload_id: str, log_id: str | None = None) -> bool:
        threading.Thread(target=ingest.run, args=(self.rt, upload_id), daemon=True).start()
        return True

    def wake_webhook(self, delivery_id: int) -> bool:
        return True


@pytest.fixture
def live_api(settings: Settings, db: Database) -> Iterator[str]:
    rt = Runtime(settings=settings, db=db, store=open_store(settings),
                 dispatcher=RecordingDispatcher())
    app = create_app(settings, dispatcher=InlineDispatcher(rt))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_push_uploads_waits_and_prints_the_final_status(
        env: dict[str, str], live_api: str, world: object, tmp_path: Path) -> None:
    from tests.conftest import World

    assert isinstance(world, World)
    track = make_audio(tmp_path / "demo.wav", 6.0)
    code, out = run(env, "push", str(track), "--token", world.token(), "--api", live_api,
                    "--title", "From the CLI")
    assert code == 0, out
    status = json.loads(out[out.index("{"):])
    assert status["status"] == "IN_LIBRARY"
    assert status["sound_id"].startswith("snd_")

    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio at all" * 100)
    code, out = run(env, "push", str(bad), "--token", world.token(), "--api", live_api)
    assert code == 1
    assert json.loads(out[out.index("{"):])["fail_reason"] == "file_format_check_failed"

    code, out = run(env, "push", str(track), "--token", "wrong", "--api", live_api)
    assert code == 1
    assert "access_token_invalid" in out
