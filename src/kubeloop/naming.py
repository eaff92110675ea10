"""Names of the Kubernetes objects made for a Kubeloop resource, derived from the resource's name.

The operator names the children it creates with these functions, and anything that must find a child
without reading it back (the REST facade looks up a ModelDeployment's Service) calls the same ones, so
the two cannot disagree. A resource's name is a DNS subdomain (up to 253 characters, dots, a leading
digit); a child's name is bounded and, where Kubernetes asks for one, a DNS label. Every function is
deterministic: a restarted or upgraded operator computes the names it made before and adopts the
objects. Changing what one returns for an existing name orphans those objects.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

_DNS1123_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def short_hash(text: str, n: int = 8) -> str:
    """The first ``n`` hex digits of ``text``'s SHA-256: what keeps shortened names distinct."""
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def child_name(base: str, suffix: str = "", *, max_len: int = 63) -> str:
    """``<base>[-<suffix>]``, deterministic and at most ``max_len`` characters (DNS label rules).

    A long base is cut and made unique again with a hash of the whole name, so two owners never
    share a child name and a restarted operator computes the same name again."""
    full = f"{base}-{suffix}" if suffix else base
    if len(full) <= max_len:
        return full
    tail = f"-{suffix}" if suffix else ""
    keep = max_len - len(tail) - 9
    return f"{base[:keep].rstrip('-.')}-{short_hash(full)}{tail}"


def dns_label_name(base: str, suffix: str = "", *, max_len: int = 63, letter_first: bool = False) -> str:
    """:func:`child_name` for a child whose name must be a DNS label: a Service (DNS-1035,
    ``letter_first``) or an Indexed Job (its pods' hostnames are ``<job>-<index>``). An owner's name
    is a DNS subdomain (dots, a leading digit): when ``child_name`` gives no valid label, dots become
    dashes, a leading digit gets an ``x`` before it, and a hash of the whole name keeps owners such
    as ``a.b`` and ``a-b`` apart. Names that are valid labels stay as ``child_name`` makes them."""
    name = child_name(base, suffix, max_len=max_len)
    if (_DNS1035_LABEL if letter_first else _DNS1123_LABEL).match(name):
        return name
    cleaned = base.replace(".", "-")
    if letter_first and not cleaned[:1].isalpha():
        cleaned = "x" + cleaned
    tail = f"-{suffix}" if suffix else ""
    keep = max_len - len(tail) - 9
    full = f"{base}-{suffix}" if suffix else base
    return f"{cleaned[:keep].rstrip('-')}-{short_hash(full)}{tail}"


def model_deployment_service_name(name: str) -> str:
    """The Service in front of a ModelDeployment's server pods (both tracks); ``status.url`` names it
    once the operator has written it."""
    return dns_label_name(name, letter_first=True)


__all__ = ["child_name", "dns_label_name", "model_deployment_service_name", "short_hash"]
