"""The fingerprint stage: refuse protected music and duplicates, index everything else.

Runs after transcoding, on the analysis PCM that the single decode pass wrote (never
decoding again), and before anything is stored:

1. the PCM is fingerprinted twice: the dense *query* fingerprint is matched against
   the index, the sparse *reference* one is kept for indexing;
2. each match is resolved to a catalog track or a sound and falls under one rule,
   checked in this order: ``copyright`` (a protected catalog track),
   ``duplicate_own`` (a sound already in this creator's library), ``duplicate_other``
   (a sound in another creator's library);
3. each rule's action is a setting: ``block`` ends the upload ``FAILED``
   (``copyright_match`` or ``duplicate_sound``; for the creator's own sound the
   status carries that ``sound_id``), ``flag`` lets the sound in and keeps the match
   on the upload for operators, ``allow`` ignores it.

A sound that gets in is indexed inside the attach transaction, so it is matchable
exactly when it is in the library, and never if the attach does not commit.

Two workers can check the same new music at the same moment, each before the other
is indexed. So the attach transaction takes a lock that serialises indexing (a
PostgreSQL advisory lock held until commit; on SQLite the attach transaction
already holds the database's write lock) and, if any track was indexed since this
job's check, matches again and may still refuse. The common case costs one query.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from pipelines import ANALYSIS_SAMPLE_RATE, load_analysis_pcm
from pipelines.fingerprint import Fingerprint, extract
from soundkit.fingerprints import (
    Identified,
    identify,
    index_sound,
    newest_track_id,
    serialise_indexing,
)
from soundkit.models import FailReason, FingerprintKind, Upload
from soundkit.settings import Settings
from worker.ingest import JobContext, Refusal
from worker.runtime import Runtime

log = logging.getLogger(__name__)

COPYRIGHT = "copyright"
DUPLICATE_OWN = "duplicate_own"
DUPLICATE_OTHER = "duplicate_other"

_REFERENCE = "fingerprint.reference"
_QUERY = "fingerprint.query"
_SEEN = "fingerprint.seen"
_FLAGGED = "fingerprint.flagged"


@dataclass(frozen=True)
class Actions:
    """``block``, ``flag`` or ``allow`` for each rule."""

    copyright: str = "block"
    duplicate_own: str = "block"
    duplicate_other: str = "block"

    @classmethod
    def from_settings(cls, settings: Settings) -> Actions:
        return cls(copyright=settings.policy_copyright,
                   duplicate_own=settings.policy_duplicate_own,
                   duplicate_other=settings.policy_duplicate_other)

    def of(self, rule: str) -> str:
        action: str = getattr(self, rule)
        return action


@dataclass(frozen=True)
class Decision:
    refusal: Refusal | None
    flagged: list[dict[str, Any]] = field(default_factory=list)


def rule_of(found: Identified, uploader_id: int) -> str:
    if found.kind == FingerprintKind.CATALOG:
        return COPYRIGHT
    return DUPLICATE_OWN if found.owner_id == uploader_id else DUPLICATE_OTHER


def match_detail(found: Identified, rule: str) -> dict[str, Any]:
    """What the operator sees about a match (stored as ``Upload.match_detail``)."""
    common = {"rule": rule, "title": found.title, "score": found.score,
              "offset_s": round(found.offset_s, 2), "speed": round(found.speed, 4)}
    if found.kind == FingerprintKind.CATALOG:
        return {"catalog_track_id": found.id, "rights_holder": found.rights_holder, **common}
    return {"sound_id": found.id, "owner_id": found.owner_id, **common}


def _refusal(found: Identified, rule: str) -> Refusal:
    detail = match_detail(found, rule)
    where = f"at {found.offset_s:.1f} s, score {found.score:g}"
    if rule == COPYRIGHT:
        return Refusal(FailReason.COPYRIGHT,
                       f"matches catalog track {found.id} {found.title!r} of "
                       f"{found.rights_holder} {where}", match_detail=detail)
    if rule == DUPLICATE_OWN:
        return Refusal(FailReason.DUPLICATE,
                       f"the creator's own sound {found.id} {found.title!r} {where}",
                       match_detail=detail, duplicate_of=str(found.id))
    # Another creator's sound: its id stays with the operator, never with the app.
    return Refusal(FailReason.DUPLICATE,
                   f"sound {found.id} of another creator {where}", match_detail=detail)


def decide(found: list[Identified], uploader_id: int, actions: Actions) -> Decision:
    """Apply the rules in order to the best match of each; the first ``block`` wins."""
    best: dict[str, Identified] = {}
    for item in found:  # best first
        best.setdefault(rule_of(item, uploader_id), item)
    flagged: list[dict[str, Any]] = []
    for rule in (COPYRIGHT, DUPLICATE_OWN, DUPLICATE_OTHER):
        top = best.get(rule)
        if top is None:
            continue
        action = actions.of(rule)
        if action == "block":
            return Decision(_refusal(top, rule), flagged)
        if action == "flag":
            flagged.append(match_detail(top, rule))
    return Decision(None, flagged)


class FingerprintingPolicy:
    """The worker's ``FingerprintPolicy``: match on ``check``, index on ``on_attach``."""

    def __init__(self, actions: Actions) -> None:
        self.actions = actions

    def check(self, ctx: JobContext) -> Refusal | None:
        assert ctx.media is not None
        pcm = load_analysis_pcm(ctx.media.analysis_pcm)
        reference = extract(pcm, ANALYSIS_SAMPLE_RATE)
        query = extract(pcm, ANALYSIS_SAMPLE_RATE, query=True)
        with ctx.rt.db.session() as session:
            seen = newest_track_id(session)  # before matching: a later track is re-checked
            found = identify(session, query, exclude_sound_id=ctx.sound_id)
        decision = decide(found, ctx.user_id, self.actions)
        ctx.extras.update({_REFERENCE: reference, _QUERY: query, _SEEN: seen,
                           _FLAGGED: decision.flagged})
        if found:
            log.info("fingerprint: %s; best %s %s score %.1f",
                     decision.refusal.reason if decision.refusal else "accepted",
                     found[0].kind, found[0].id, found[0].score)
        return decision.refusal

    def on_attach(self, session: Session, ctx: JobContext) -> Refusal | None:
        reference: Fingerprint | None = ctx.extras.get(_REFERENCE)
        if reference is None:  # check() did not run in this attempt: nothing to index
            return None
        serialise_indexing(session)
        if newest_track_id(session) > ctx.extras[_SEEN]:
            found = identify(session, ctx.extras[_QUERY], exclude_sound_id=ctx.sound_id)
            decision = decide(found, ctx.user_id, self.actions)
            if decision.refusal is not None:
                log.info("fingerprint: %s at attach; %s %s indexed meanwhile, score %.1f",
                         decision.refusal.reason, found[0].kind, found[0].id, found[0].score)
                return decision.refusal
            ctx.extras[_FLAGGED] = decision.flagged
        session.flush()  # the Sound row first: the index row refers to it
        index_sound(session, ctx.sound_id, reference)
        flagged: list[dict[str, Any]] = ctx.extras.get(_FLAGGED) or []
        if flagged:
            session.execute(update(Upload).where(Upload.id == ctx.upload_id)
                            .values(match_detail={"action": "flag", "matches": flagged})
                            .execution_options(synchronize_session=False))
        return None


def policy_factory(rt: Runtime) -> FingerprintingPolicy:
    """What ``worker.app`` registers with ``ingest.set_policy_factory``."""
    return FingerprintingPolicy(Actions.from_settings(rt.settings))
