"""Errors raised by the drift engine.

Every error about input data names the feature it concerns, so that a failed drift check (or a
trainer writing a baseline) says which column to fix.
"""

from __future__ import annotations

from collections.abc import Iterable


class DriftError(ValueError):
    """Base class of every error raised by :mod:`kubeloop.drift`."""


class DriftInputError(DriftError):
    """A column cannot be used as given (wrong dtype, wrong shape, inconsistent length, ...)."""

    def __init__(self, feature: str, message: str) -> None:
        self.feature = feature
        super().__init__(f"feature {feature!r}: {message}")


class MissingFeatureError(DriftError):
    """The data lacks one or more features that the baseline (or the caller) requires."""

    def __init__(self, features: Iterable[str], where: str = "the current data") -> None:
        self.features = tuple(features)
        names = ", ".join(repr(f) for f in self.features)
        plural = "s" if len(self.features) != 1 else ""
        super().__init__(f"feature{plural} {names} missing from {where}")


class BaselineError(DriftError):
    """A baseline document is invalid or of an unsupported schema version."""
