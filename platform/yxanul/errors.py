"""Errors a user can act on.

Every job catches :class:`YxanulError` at its entry point and prints ``error: <message>`` as one
line, without a traceback, then exits non-zero. Messages name the file, the key, the value and the
fix. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class YxanulError(Exception):
    """Base class: a problem with the user's input, config or environment."""


class ConfigError(YxanulError):
    """A config file, key or value is wrong."""


class DataError(YxanulError):
    """Input data is missing, unreadable or malformed."""


class PrecisionError(YxanulError):
    """The requested precision cannot run here (no CUDA, card too old, Transformer Engine missing)."""


class TrackingError(YxanulError):
    """The MLflow tracking server or store cannot be used."""
