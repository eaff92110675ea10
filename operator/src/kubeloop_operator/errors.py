"""How failures inside handlers are classified (metrics) and retried (kopf.TemporaryError).

User errors never come here: they are status (a Failed condition, ``status.failure``) and an Event,
written by the reconcilers. What comes here is the cluster saying "not now" (retried with a delay)
and bugs (kopf retries them with its backoff; the metrics call them ``bug``).
"""

from __future__ import annotations

from typing import Final

import kopf

from kubeloop_operator.k8s import KubeError, NameConflictError

RETRY_DELAY_S: Final = 10.0
"""Delay before a handler retries after a transient API error."""


def classify(e: BaseException) -> tuple[str, str]:
    """(error class, result) for metrics: result is ``retry`` for what kopf retries on purpose."""
    cause = e.__cause__ if isinstance(e, kopf.TemporaryError) and e.__cause__ is not None else e
    result = "retry" if isinstance(e, kopf.TemporaryError) else "error"
    if isinstance(cause, NameConflictError):
        return "name_conflict", result
    if isinstance(cause, KubeError):
        if cause.status == 0:
            return "api_unreachable", result
        if cause.status == 409:
            return "api_conflict", result
        if cause.status >= 500:
            return "api_server", result
        return "api_client", result
    if isinstance(e, kopf.TemporaryError):
        return "temporary", result
    return "bug", result


def retry_later(message: str, delay: float = RETRY_DELAY_S) -> kopf.TemporaryError:
    """A TemporaryError that says what failed (the API server's answer) and when it is retried."""
    return kopf.TemporaryError(f"{message}; retrying in {delay:.0f} s", delay=delay)
