"""Errors raised by the fingerprint engine."""

from __future__ import annotations


class FingerprintError(Exception):
    """Base class of the engine's errors."""


class InvalidAudioError(FingerprintError, ValueError):
    """The PCM handed to ``extract`` is not mono numeric audio at a usable rate."""
