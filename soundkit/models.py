"""SQLAlchemy models: the database is the source of truth for every job.

Public identifiers (``upl_…``, ``snd_…``) are random strings so that nothing about
volume or order leaks through the API; integer keys stay internal. Timestamps are
stored as timezone-aware UTC.
"""

from __future__ import annotations

import enum
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_public_id(prefix: str) -> str:
    """An unguessable public id such as ``upl_3kq…`` (20 random bytes, base32)."""
    return f"{prefix}_{secrets.token_hex(12)}"


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime}


class UploadStatus(enum.StrEnum):
    """Upload statuses as the API reports them (API.md)."""

    PROCESSING_UPLOAD = "PROCESSING_UPLOAD"
    PROCESSING_DOWNLOAD = "PROCESSING_DOWNLOAD"
    PROCESSING = "PROCESSING"
    IN_LIBRARY = "IN_LIBRARY"
    FAILED = "FAILED"


class Stage(enum.StrEnum):
    """Where a job is inside ``PROCESSING``; each stage is idempotent."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    VALIDATING = "validating"
    TRANSCODING = "transcoding"
    FINGERPRINTING = "fingerprinting"
    STORING = "storing"
    ATTACHING = "attaching"
    DONE = "done"


class FailReason(enum.StrEnum):
    """Machine-readable failure codes (API.md). Only ``internal`` may be retried."""

    FILE_FORMAT = "file_format_check_failed"
    DURATION = "duration_check_failed"
    FILE_SIZE = "file_size_check_failed"
    DUPLICATE = "duplicate_sound"
    COPYRIGHT = "copyright_match"
    AUTH_REMOVED = "auth_removed"
    CANCELLED = "upload_cancelled"
    INTERNAL = "internal"


class Developer(Base):
    """The company or person behind one or more apps; ``union_id`` is per developer."""

    __tablename__ = "developers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    apps: Mapped[list[App]] = relationship(back_populates="developer")


class User(Base):
    """A creator (and, with ``is_operator``, an operator) who signs in with a password."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    avatar_url: Mapped[str | None] = mapped_column(String(500))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    library_seen_at: Mapped[datetime | None] = mapped_column()


class App(Base):
    """A music app registered with Login Kit (an OAuth client)."""

    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_key: Mapped[str] = mapped_column(String(64), unique=True)
    client_secret_hash: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(200))
    developer_id: Mapped[int] = mapped_column(ForeignKey("developers.id"))
    is_public: Mapped[bool] = mapped_column(Boolean, default=False)
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    allowed_scopes: Mapped[str] = mapped_column(String(500))
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    developer: Mapped[Developer] = relationship(back_populates="apps")


class Token(Base):
    """An access token (and optionally its refresh token), both stored as SHA-256 hashes.

    ``family_id`` groups every token descended from one grant by refresh rotation, so a
    replayed refresh token can revoke the whole family at once.
    """

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    access_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    refresh_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(500))
    family_id: Mapped[str] = mapped_column(String(32), index=True)
    issued_by: Mapped[str] = mapped_column(String(32), default="oauth")
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    refresh_expires_at: Mapped[datetime | None] = mapped_column()
    refreshed_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()

    app: Mapped[App] = relationship()
    user: Mapped[User] = relationship()

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.scope.replace(",", " ").split())

    def is_active(self, now: datetime | None = None) -> bool:
        now = now or utcnow()
        return self.revoked_at is None and self.expires_at > now


class Consent(Base):
    """What a creator allowed an app; one row per (creator, app), revoked on Remove access."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("user_id", "app_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(500))
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()

    app: Mapped[App] = relationship()
    user: Mapped[User] = relationship()


class Upload(Base):
    """One pushed track and the job that ingests it: a state machine saved on its row.

    A worker owns the job only while ``lease_owner``/``lease_expires_at`` say so; it
    takes the lease with a compare-and-set (``jobs.claim``), so a duplicated broker
    message or a second worker finds nothing to do.
    """

    __tablename__ = "uploads"
    __table_args__ = (
        UniqueConstraint("app_id", "user_id", "idempotency_key"),
        Index("ix_uploads_status_lease", "status", "lease_expires_at"),
        Index("ix_uploads_user_created", "user_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True,
                                    default=lambda: new_public_id("upl"))
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(32), default=UploadStatus.PROCESSING_UPLOAD)
    stage: Mapped[str] = mapped_column(String(32), default=Stage.RECEIVING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    wakeup_sent_at: Mapped[datetime | None] = mapped_column()
    fail_reason: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str | None] = mapped_column(String(150))
    original_filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(255))
    incoming_key: Mapped[str | None] = mapped_column(String(500))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    uploaded_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    log_id: Mapped[str | None] = mapped_column(String(64))
    duplicate_of_sound_id: Mapped[str | None] = mapped_column(String(40))
    match_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sound_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()

    app: Mapped[App] = relationship()
    user: Mapped[User] = relationship()


class StageRun(Base):
    """How long each stage took on each attempt: the operator console's percentiles."""

    __tablename__ = "stage_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upload_id: Mapped[str] = mapped_column(
        ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime] = mapped_column(index=True)
    outcome: Mapped[str] = mapped_column(String(32))


class Sound(Base):
    """A ready sound in a creator's library."""

    __tablename__ = "sounds"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    upload_id: Mapped[str] = mapped_column(String(40), unique=True)
    title: Mapped[str] = mapped_column(String(150))
    duration_ms: Mapped[int] = mapped_column(Integer)
    sample_rate: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    source_codec: Mapped[str] = mapped_column(String(32))
    integrated_lufs: Mapped[float | None] = mapped_column(Float)
    true_peak_dbtp: Mapped[float | None] = mapped_column(Float)
    lra: Mapped[float | None] = mapped_column(Float)
    original_key: Mapped[str] = mapped_column(String(500))
    playback_key: Mapped[str] = mapped_column(String(500))
    preview_key: Mapped[str] = mapped_column(String(500))
    waveform_key: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    app: Mapped[App] = relationship()
    owner: Mapped[User] = relationship()

    @property
    def object_keys(self) -> list[str]:
        return [self.original_key, self.playback_key, self.preview_key, self.waveform_key]


class Notification(Base):
    """Something a creator should see: a sound arrived, or an upload failed."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    upload_id: Mapped[str | None] = mapped_column(String(40))
    sound_id: Mapped[str | None] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column()


class WebhookDelivery(Base):
    """The outbox: a webhook written in the same transaction as the change it reports.

    ``dedupe_key`` makes a re-run of the same effect write the row once; the body is
    frozen at creation so every retry sends (and signs) the same bytes.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(64))
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()

    app: Mapped[App] = relationship()


class AuditEntry(Base):
    """Who did what: operator actions and operator-issued tokens."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AuthorizationCode(Base):
    """A Login Kit authorization code, stored as a SHA-256 hash and spent exactly once.

    ``family_id`` is chosen when the code is issued and carried by every token minted
    from it, so a second presentation of the code (RFC 9700: a sign of theft) can
    revoke everything that code produced with one ``UPDATE``. ``used_at`` is set by a
    compare-and-set, which is what makes consumption atomic.
    """

    __tablename__ = "authorization_codes"
    __table_args__ = (Index("ix_authorization_codes_user_app", "user_id", "app_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(String(500))
    code_challenge: Mapped[str | None] = mapped_column(String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(String(10))
    family_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class SignInFailure(Base):
    """One failed password sign-in, kept for the throttle's sliding window."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (
        Index("ix_sign_in_failures_username_created", "username", "created_at"),
        Index("ix_sign_in_failures_address_created", "remote_addr", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    remote_addr: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- Fingerprint index ---------------------------------------------------------------------


class CatalogTrack(Base):
    """A protected track registered by an operator (``soundkit catalog add``).

    ``sha256`` of the registered file is unique so that adding a folder twice skips
    what is already there.
    """

    __tablename__ = "catalog_tracks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    rights_holder: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    duration_s: Mapped[float] = mapped_column(Float)
    source_name: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FingerprintKind(enum.StrEnum):
    """What an indexed track is: a creator's sound or a protected catalog track."""

    SOUND = "sound"
    CATALOG = "catalog"


class FingerprintTrack(Base):
    """The integer id the fingerprint index knows a track by, and what that track is.

    Postings carry only this 4-byte id, never a public id. ``hash_list`` holds the
    track's distinct hashes (sorted, delta-coded, zlib) so that deleting the track
    rewrites only the blocks of its buckets instead of reading every block; it
    costs about 2.3 bytes a hash. The foreign keys are ``SET NULL`` rather
    than ``CASCADE``: a sound removed by any other path than ``library.delete_sound``
    leaves a row that matching ignores and that still knows which rows to delete.
    """

    __tablename__ = "fingerprint_tracks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    sound_id: Mapped[str | None] = mapped_column(
        ForeignKey("sounds.id", ondelete="SET NULL"), unique=True)
    catalog_track_id: Mapped[int | None] = mapped_column(
        ForeignKey("catalog_tracks.id", ondelete="SET NULL"), unique=True)
    hash_count: Mapped[int] = mapped_column(Integer, default=0)
    hash_list: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


#: The index itself: postings ``(hash, track_id, t)`` packed by hash bucket, one row
#: per bucket (see :mod:`soundkit.postings` for the layout). ``key`` is the bucket's
#: number with the layout's shift above it; on SQLite it is the rowid (an INTEGER
#: PRIMARY KEY), so the table is its own and only b-tree. There is no foreign key
#: to the tracks: a posting names its track by ``FingerprintTrack.id``.
fingerprint_blocks = Table(
    "fingerprint_blocks",
    Base.metadata,
    Column("key", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=False),
    Column("postings", LargeBinary, nullable=False),
)


class FingerprintLayout(Base):
    """The index's one layout row: its bucket width and how many postings it holds.

    ``shift`` is the layout new postings are written in. ``previous_shift`` is set
    while the blocks are being rebuilt from that older layout (lookups then read
    both); ``postings`` is kept up to date by every write so that the maintenance
    task can tell when the layout no longer fits the index's size.
    """

    __tablename__ = "fingerprint_layout"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    shift: Mapped[int] = mapped_column(Integer)
    previous_shift: Mapped[int | None] = mapped_column(Integer)
    postings: Mapped[int] = mapped_column(BigInteger, default=0)
