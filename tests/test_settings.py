"""Settings: embedded defaults, production values, and a named error for each bad value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from soundkit.settings import SETTINGS, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_defaults(tmp_path: Path) -> None:
    settings = load_settings({"SOUNDKIT_VAR_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'soundkit.db'}"
    assert settings.broker_url == "filesystem://"
    assert settings.storage_url == f"file://{tmp_path / 'objects'}"
    assert settings.bind == "127.0.0.1:8000"
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.max_upload_bytes == 512 * 1024 * 1024
    # the generated secret key is kept, so a restart honours old sessions and URLs
    assert load_settings({"SOUNDKIT_VAR_DIR": str(tmp_path)}).secret_key == settings.secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_production_values(tmp_path: Path) -> None:
    settings = load_settings({
        "SOUNDKIT_VAR_DIR": str(tmp_path), "SOUNDKIT_ENV": "production",
        "SOUNDKIT_SECRET_KEY": "k" * 40, "DATABASE_URL": "postgresql://u@db/soundkit",
        "BROKER_URL": "redis://redis:6379/0", "STORAGE_URL": "s3://bucket/prefix",
        "S3_ENDPOINT_URL": "http://minio:9000", "SOUNDKIT_BIND": "0.0.0.0:9000"})
    assert settings.database_url == "postgresql+psycopg://u@db/soundkit"
    assert settings.public_url == "http://127.0.0.1:9000"
    assert settings.s3_endpoint_url == "http://minio:9000"


@pytest.mark.parametrize(("env", "names"), [
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"BROKER_URL": "amqp://x"}, "BROKER_URL"),
    ({"STORAGE_URL": "ftp://x"}, "STORAGE_URL"),
    ({"STORAGE_URL": "file://relative"}, "STORAGE_URL"),
    ({"STORAGE_URL": "s3://"}, "STORAGE_URL"),
    ({"SOUNDKIT_BIND": "8000"}, "SOUNDKIT_BIND"),
    ({"SOUNDKIT_BIND": "host:99999"}, "SOUNDKIT_BIND"),
    ({"SOUNDKIT_MAX_UPLOAD_BYTES": "lots"}, "SOUNDKIT_MAX_UPLOAD_BYTES"),
    ({"SOUNDKIT_MAX_UPLOAD_BYTES": "0"}, "SOUNDKIT_MAX_UPLOAD_BYTES"),
    ({"SOUNDKIT_MAX_DURATION_S": "3"}, "SOUNDKIT_MAX_DURATION_S"),
    ({"SOUNDKIT_VISIBILITY_TIMEOUT_S": "60", "SOUNDKIT_JOB_LEASE_S": "120"},
     "SOUNDKIT_VISIBILITY_TIMEOUT_S"),
    ({"SOUNDKIT_FFMPEG_TIMEOUT_S": "2000"}, "SOUNDKIT_FFMPEG_TIMEOUT_S"),
    ({"SOUNDKIT_SECRET_KEY": "short"}, "SOUNDKIT_SECRET_KEY"),
    ({"SOUNDKIT_ENV": "production", "BROKER_URL": "redis://r:6379/0"}, "SOUNDKIT_SECRET_KEY"),
    ({"SOUNDKIT_ENV": "production", "SOUNDKIT_SECRET_KEY": "k" * 40}, "BROKER_URL"),
    ({"SOUNDKIT_ENV": "staging"}, "SOUNDKIT_ENV"),
    ({"SOUNDKIT_LOG_LEVEL": "LOUD"}, "SOUNDKIT_LOG_LEVEL"),
    ({"SOUNDKIT_PUBLIC_URL": "ftp://x"}, "SOUNDKIT_PUBLIC_URL"),
])
def test_each_bad_value_names_its_setting(tmp_path: Path, env: dict[str, str],
                                          names: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"SOUNDKIT_VAR_DIR": str(tmp_path), **env})
    assert str(raised.value).startswith(f"{names}:")


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.name}`" in readme or f"`{setting.name} /" in readme \
            or f"/ `{setting.name}`" in readme, setting.name


def test_compose_stack_configuration_is_valid_production_settings(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert {"api", "worker", "beat", "redis", "postgres", "minio", "flower"} <= set(
        compose["services"])
    given = {"SOUNDKIT_SECRET_KEY": "k" * 40}

    def interpolate(value: str) -> str:  # compose's ${VAR:-default} and ${VAR:?error}
        return re.sub(r"\$\{(\w+):[-?]([^}]*)\}",
                      lambda m: given.get(m.group(1), m.group(2)), value)

    env = {k: interpolate(str(v)) for k, v in compose["x-soundkit"]["environment"].items()}
    env["SOUNDKIT_VAR_DIR"] = str(tmp_path)
    settings = load_settings(env)
    assert settings.env == "production"
    assert settings.broker_url.startswith("redis://")
    assert settings.storage_url.startswith("s3://")


def test_trusted_proxies_give_the_client_address(make_settings: object) -> None:
    from flask import request

    from api import create_app

    app = create_app(make_settings(SOUNDKIT_TRUSTED_PROXIES="1"))  # type: ignore[operator]

    @app.get("/_whoami")
    def whoami() -> str:
        return str(request.remote_addr)

    response = app.test_client().get("/_whoami", headers={"X-Forwarded-For": "203.0.113.9"},
                                     environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert response.text == "203.0.113.9"
    plain = create_app(make_settings()).test_client()  # type: ignore[operator]
    assert plain.application.wsgi_app.__class__.__name__ != "ProxyFix"
