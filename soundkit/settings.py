"""Every setting Soundkit reads, in one place.

This is the only module that looks at ``os.environ``. Every process (api, worker,
beat, CLI) builds its configuration from :func:`load_settings`, so the web side and
the worker can never disagree about the database, the broker or the object store.
Defaults are the *embedded* column of docs/ARCHITECTURE.md: SQLite, Celery's
filesystem transport and a local object directory, all under ``var/``. Pointing
``DATABASE_URL``, ``BROKER_URL`` and ``STORAGE_URL`` at PostgreSQL, Redis and S3
switches to the production column without any other change.

An invalid value stops start-up with a :class:`SettingsError` that names the
variable, because a half-configured worker that fails on its first job is worse
than one that refuses to start.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting is missing or malformed; the message starts with its name."""


@dataclass(frozen=True)
class Setting:
    """Documentation of one environment variable (rendered into the README)."""

    name: str
    default: str
    meaning: str


#: Every variable, its default and what it does. The README's table mirrors this list
#: (``soundkit settings`` prints it), and a test keeps the two in step.
SETTINGS: tuple[Setting, ...] = (
    Setting("SOUNDKIT_VAR_DIR", "./var", "Data directory for the embedded defaults."),
    Setting("DATABASE_URL", "sqlite:///$SOUNDKIT_VAR_DIR/soundkit.db",
            "SQLAlchemy URL: sqlite:///… or postgresql+psycopg://…"),
    Setting("BROKER_URL", "filesystem://",
            "Celery broker: filesystem:// (folders under var/broker) or redis://host:port/db"),
    Setting("STORAGE_URL", "file://$SOUNDKIT_VAR_DIR/objects",
            "Object store: file:///absolute/dir or s3://bucket[/prefix]"),
    Setting("S3_ENDPOINT_URL", "(AWS)", "S3-compatible endpoint for s3:// storage (MinIO, moto…)"),
    Setting("S3_REGION", "us-east-1", "Region used to sign S3 requests"),
    Setting("SOUNDKIT_BIND", "127.0.0.1:8000", "host:port the api listens on"),
    Setting("SOUNDKIT_PUBLIC_URL", "http://$SOUNDKIT_BIND",
            "Base URL apps and browsers use to reach the api (signed media URLs)"),
    Setting("SOUNDKIT_TRUSTED_PROXIES", "0", "Reverse proxies in front of the api whose "
            "X-Forwarded-For/-Proto are trusted (sign-in throttling keys on the client address)"),
    Setting("SOUNDKIT_SECRET_KEY", "(generated into var/secret_key)",
            "Signs sessions, media URLs and per-app identifiers; required in production"),
    Setting("SOUNDKIT_ENV", "development", "development or production (production requires "
            "SOUNDKIT_SECRET_KEY and refuses the embedded broker)"),
    Setting("SOUNDKIT_MAX_UPLOAD_BYTES", str(512 * MIB), "Largest accepted upload, in bytes"),
    Setting("SOUNDKIT_MIN_DURATION_S", "5", "Shortest accepted sound, seconds"),
    Setting("SOUNDKIT_MAX_DURATION_S", "600", "Longest accepted sound, seconds"),
    Setting("SOUNDKIT_FFMPEG", "ffmpeg", "ffmpeg executable"),
    Setting("SOUNDKIT_FFPROBE", "ffprobe", "ffprobe executable"),
    Setting("SOUNDKIT_FFMPEG_TIMEOUT_S", "300", "Wall-clock limit for one ffmpeg run"),
    Setting("SOUNDKIT_JOB_LEASE_S", "900", "How long a worker owns a claimed job before the "
            "reconciler may hand it to another"),
    Setting("SOUNDKIT_MAX_ATTEMPTS", "5", "Claims of one job before it ends FAILED/internal"),
    Setting("SOUNDKIT_VISIBILITY_TIMEOUT_S", "3600", "Redis visibility timeout; above the "
            "longest job"),
    Setting("SOUNDKIT_RECONCILE_INTERVAL_S", "10", "How often beat looks for stalled jobs"),
    Setting("SOUNDKIT_WAKEUP_GRACE_S", "30", "A queued job with no claim for this long gets "
            "its wake-up message sent again"),
    Setting("SOUNDKIT_URL_TTL_S", "3600", "Lifetime of signed playback/preview URLs"),
    Setting("SOUNDKIT_WEBHOOK_TIMEOUT_S", "10", "HTTP timeout of one webhook delivery"),
    Setting("SOUNDKIT_WEBHOOK_MAX_AGE_S", str(72 * 3600), "Webhook deliveries are retried "
            "for this long"),
    Setting("SOUNDKIT_WORKER_CONCURRENCY", "2", "Worker processes started by `soundkit run`"),
    Setting("SOUNDKIT_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Setting("SOUNDKIT_POLICY_COPYRIGHT", "block", "An upload matching a protected catalog "
            "track: block (FAILED copyright_match), flag (accepted, the match kept on the "
            "upload for operators) or allow"),
    Setting("SOUNDKIT_POLICY_DUPLICATE_OTHER", "block", "An upload matching a sound in another "
            "creator's library: block (FAILED duplicate_sound), flag or allow"),
    Setting("SOUNDKIT_POLICY_DUPLICATE_OWN", "block", "An upload matching a sound already in "
            "the same creator's library: block (FAILED duplicate_sound, with that sound_id), "
            "flag or allow"),
    Setting("SOUNDKIT_OPS_TOKEN", "(none)", "Bearer token that opens /metrics and the read-only "
            "/ops/api/ to scrapers and scripts (at least 32 characters); without it only a "
            "signed-in operator can read them"),
    Setting("PROMETHEUS_MULTIPROC_DIR", "(a fresh temporary directory under gunicorn)",
            "Where the api's processes share their HTTP metrics (prometheus-client's "
            "multiprocess mode); emptied when gunicorn starts"),
)


@dataclass(frozen=True)
class Settings:
    """The resolved configuration. Build it with :func:`load_settings`."""

    var_dir: Path
    database_url: str
    broker_url: str
    storage_url: str
    s3_endpoint_url: str | None
    s3_region: str
    bind_host: str
    bind_port: int
    public_url: str
    trusted_proxies: int
    secret_key: str
    env: str
    max_upload_bytes: int
    min_duration_s: float
    max_duration_s: float
    ffmpeg: str
    ffprobe: str
    ffmpeg_timeout_s: float
    job_lease_s: int
    max_attempts: int
    visibility_timeout_s: int
    reconcile_interval_s: float
    wakeup_grace_s: float
    url_ttl_s: int
    webhook_timeout_s: float
    webhook_max_age_s: int
    worker_concurrency: int
    log_level: str
    ops_token: str | None = None
    policy_copyright: str = "block"
    policy_duplicate_other: str = "block"
    policy_duplicate_own: str = "block"
    prometheus_multiproc_dir: Path | None = None

    @property
    def bind(self) -> str:
        return f"{self.bind_host}:{self.bind_port}"

    @property
    def broker_dir(self) -> Path:
        """Folder used by Celery's filesystem transport on embedded defaults."""
        return self.var_dir / "broker"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _bind(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"SOUNDKIT_BIND: expected host:port, got {raw!r}")
    return host.strip("[]"), int(port)


def _check_database_url(url: str) -> str:
    scheme = url.split(":", 1)[0]
    if not scheme.startswith(("sqlite", "postgresql")):
        raise SettingsError(
            f"DATABASE_URL: expected sqlite:///… or postgresql+psycopg://…, got {url!r}")
    if scheme == "postgresql" or scheme == "postgres":
        # psycopg 3 is the driver we ship; SQLAlchemy's bare scheme means psycopg2.
        url = "postgresql+psycopg:" + url.split(":", 1)[1]
    return url


def _check_broker_url(url: str) -> str:
    scheme = urlparse(url).scheme
    if scheme not in {"filesystem", "redis", "rediss"}:
        raise SettingsError(
            f"BROKER_URL: expected filesystem:// or redis://host:port/db, got {url!r}")
    return url


def _check_storage_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if not parsed.path.startswith("/"):
            raise SettingsError(f"STORAGE_URL: file:// needs an absolute path, got {url!r}")
    elif parsed.scheme == "s3":
        if not parsed.netloc:
            raise SettingsError(f"STORAGE_URL: s3:// needs a bucket name, got {url!r}")
    else:
        raise SettingsError(f"STORAGE_URL: expected file:///dir or s3://bucket, got {url!r}")
    return url


def _secret_key(env: Mapping[str, str], var_dir: Path, production: bool) -> str:
    """The explicit key, or in development one generated once and kept under var/.

    Keeping it on disk means a restarted ``make run`` still accepts the sessions and
    signed URLs it handed out.
    """
    explicit = env.get("SOUNDKIT_SECRET_KEY", "").strip()
    if explicit:
        if len(explicit) < 32:
            raise SettingsError("SOUNDKIT_SECRET_KEY: must be at least 32 characters")
        return explicit
    if production:
        raise SettingsError("SOUNDKIT_SECRET_KEY: required when SOUNDKIT_ENV=production")
    key_file = var_dir / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


def _log_level(raw: str) -> str:
    level = raw.strip().upper() or "INFO"
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(f"SOUNDKIT_LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, "
                            f"got {raw!r}")
    return level


#: What a fingerprint policy rule may do with a matching upload.
POLICY_ACTIONS = ("block", "flag", "allow")


def _policy(env: Mapping[str, str], name: str) -> str:
    action = env.get(name, "").strip().lower() or "block"
    if action not in POLICY_ACTIONS:
        raise SettingsError(f"{name}: expected block, flag or allow, got {action!r}")
    return action


def _ops_token(raw: str) -> str | None:
    token = raw.strip()
    if token and len(token) < 32:
        raise SettingsError("SOUNDKIT_OPS_TOKEN: must be at least 32 characters")
    return token or None


def _multiproc_dir(raw: str) -> Path | None:
    if not raw.strip():
        return None
    path = Path(raw.strip())
    if not path.is_dir():
        raise SettingsError(f"PROMETHEUS_MULTIPROC_DIR: {raw!r} is not a directory")
    return path


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting from ``environ`` (the process environment by default)."""
    env = os.environ if environ is None else environ
    var_dir = Path(env.get("SOUNDKIT_VAR_DIR", "").strip() or "var").resolve()
    mode = env.get("SOUNDKIT_ENV", "development").strip() or "development"
    if mode not in {"development", "production"}:
        raise SettingsError(f"SOUNDKIT_ENV: expected development or production, got {mode!r}")
    production = mode == "production"

    database_url = _check_database_url(
        env.get("DATABASE_URL", "").strip() or f"sqlite:///{var_dir / 'soundkit.db'}")
    broker_url = _check_broker_url(env.get("BROKER_URL", "").strip() or "filesystem://")
    if production and broker_url.startswith("filesystem"):
        raise SettingsError("BROKER_URL: the filesystem broker is for development; "
                            "set redis://… when SOUNDKIT_ENV=production")
    storage_url = _check_storage_url(
        env.get("STORAGE_URL", "").strip() or f"file://{var_dir / 'objects'}")
    host, port = _bind(env.get("SOUNDKIT_BIND", "").strip() or "127.0.0.1:8000")
    shown_host = "127.0.0.1" if host in {"0.0.0.0", "::"} else host  # noqa: S104
    public_url = (env.get("SOUNDKIT_PUBLIC_URL", "").strip()
                  or f"http://{shown_host}:{port}").rstrip("/")
    if urlparse(public_url).scheme not in {"http", "https"}:
        raise SettingsError(f"SOUNDKIT_PUBLIC_URL: expected http(s)://…, got {public_url!r}")

    min_duration = _float(env, "SOUNDKIT_MIN_DURATION_S", 5.0)
    max_duration = _float(env, "SOUNDKIT_MAX_DURATION_S", 600.0, minimum=1.0)
    if max_duration <= min_duration:
        raise SettingsError("SOUNDKIT_MAX_DURATION_S: must be above SOUNDKIT_MIN_DURATION_S")
    lease = _int(env, "SOUNDKIT_JOB_LEASE_S", 900, minimum=5)
    visibility = _int(env, "SOUNDKIT_VISIBILITY_TIMEOUT_S", 3600, minimum=10)
    if visibility <= lease:
        raise SettingsError("SOUNDKIT_VISIBILITY_TIMEOUT_S: must be above SOUNDKIT_JOB_LEASE_S, "
                            "or the broker re-delivers jobs that are still running")
    ffmpeg_timeout = _float(env, "SOUNDKIT_FFMPEG_TIMEOUT_S", 300.0, minimum=1.0)
    if ffmpeg_timeout >= lease:
        raise SettingsError("SOUNDKIT_FFMPEG_TIMEOUT_S: must be below SOUNDKIT_JOB_LEASE_S")

    return Settings(
        var_dir=var_dir,
        database_url=database_url,
        broker_url=broker_url,
        storage_url=storage_url,
        s3_endpoint_url=env.get("S3_ENDPOINT_URL", "").strip() or None,
        s3_region=env.get("S3_REGION", "").strip() or "us-east-1",
        bind_host=host,
        bind_port=port,
        public_url=public_url,
        trusted_proxies=_int(env, "SOUNDKIT_TRUSTED_PROXIES", 0),
        secret_key=_secret_key(env, var_dir, production),
        env=mode,
        max_upload_bytes=_int(env, "SOUNDKIT_MAX_UPLOAD_BYTES", 512 * MIB, minimum=1),
        min_duration_s=min_duration,
        max_duration_s=max_duration,
        ffmpeg=env.get("SOUNDKIT_FFMPEG", "").strip() or "ffmpeg",
        ffprobe=env.get("SOUNDKIT_FFPROBE", "").strip() or "ffprobe",
        ffmpeg_timeout_s=ffmpeg_timeout,
        job_lease_s=lease,
        max_attempts=_int(env, "SOUNDKIT_MAX_ATTEMPTS", 5, minimum=1),
        visibility_timeout_s=visibility,
        reconcile_interval_s=_float(env, "SOUNDKIT_RECONCILE_INTERVAL_S", 10.0, minimum=0.5),
        wakeup_grace_s=_float(env, "SOUNDKIT_WAKEUP_GRACE_S", 30.0, minimum=0.5),
        url_ttl_s=_int(env, "SOUNDKIT_URL_TTL_S", 3600, minimum=10),
        webhook_timeout_s=_float(env, "SOUNDKIT_WEBHOOK_TIMEOUT_S", 10.0, minimum=0.1),
        webhook_max_age_s=_int(env, "SOUNDKIT_WEBHOOK_MAX_AGE_S", 72 * 3600, minimum=1),
        worker_concurrency=_int(env, "SOUNDKIT_WORKER_CONCURRENCY", 2, minimum=1),
        log_level=_log_level(env.get("SOUNDKIT_LOG_LEVEL", "")),
        ops_token=_ops_token(env.get("SOUNDKIT_OPS_TOKEN", "")),
        policy_copyright=_policy(env, "SOUNDKIT_POLICY_COPYRIGHT"),
        policy_duplicate_other=_policy(env, "SOUNDKIT_POLICY_DUPLICATE_OTHER"),
        policy_duplicate_own=_policy(env, "SOUNDKIT_POLICY_DUPLICATE_OWN"),
        prometheus_multiproc_dir=_multiproc_dir(env.get("PROMETHEUS_MULTIPROC_DIR", "")),
    )
