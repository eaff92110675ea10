"""The operator's object store: :mod:`kubeloop.storage`'s S3 adapter, configured from its settings.

The operator itself stores little: the logs of failed training pods (``logs/…``, DESIGN §3).
Without an endpoint it runs without a store and keeps only the log tails in status.
"""

from __future__ import annotations

from kubeloop.storage import ObjectStore, S3Config
from kubeloop_operator.settings import OperatorSettings


def open_store(settings: OperatorSettings) -> ObjectStore | None:
    if not settings.s3_endpoint:
        return None
    from kubeloop.storage.s3 import S3Store

    return S3Store(
        S3Config(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    )
