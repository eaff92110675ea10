"""Names of the objects made for a resource (kubeloop.naming): bounded, deterministic, distinct, valid
DNS labels where Kubernetes needs them, and stable (a restarted or upgraded operator adopts what an
older one made; the REST facade finds a ModelDeployment's Service by the same function)."""

from __future__ import annotations

import re

import pytest

from kubeloop import naming

_DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


@pytest.mark.parametrize("length", [40, 56, 57, 63, 64, 120, 253])
def test_child_names_are_deterministic_bounded_and_distinct(length: int) -> None:
    name, other = "a" * (length - 1) + "b", "a" * (length - 1) + "c"
    for suffix, max_len in (("", 63), ("drift-check", 63), ("x", 52)):
        child = naming.child_name(name, suffix, max_len=max_len)
        assert child == naming.child_name(name, suffix, max_len=max_len)
        assert len(child) <= max_len
        assert child != naming.child_name(other, suffix, max_len=max_len)
        if suffix:
            assert child.endswith(f"-{suffix}")
    assert naming.child_name("short", "x") == "short-x"


@pytest.mark.parametrize(
    "name", ["iris.v2", "1st-model", "a.b", "7-layers", "v1.2.3", "9" * 253, "a" * 60 + ".b"]
)
def test_dns_label_names_are_valid_labels_for_any_owner_name(name: str) -> None:
    # An owner's name is a DNS subdomain (dots, a leading digit, up to 253 characters).
    for suffix, letter_first, pattern in (("", False, _DNS1123_LABEL), ("", True, _DNS1035_LABEL),
                                          ("rdzv", True, _DNS1035_LABEL)):  # fmt: skip
        label = naming.dns_label_name(name, suffix, letter_first=letter_first)
        assert re.fullmatch(pattern, label), label
        assert len(label) <= 63
        if "." in name:  # "a.b" and "a-b" may both exist: their children must not collide
            assert label != naming.dns_label_name(name.replace(".", "-"), suffix, letter_first=letter_first)


def test_model_deployment_service_name() -> None:
    assert naming.model_deployment_service_name("breast-cancer") == "breast-cancer"
    for name in ("iris.v2", "1st-model", "9" * 253):
        svc = naming.model_deployment_service_name(name)
        assert re.fullmatch(_DNS1035_LABEL, svc)
        assert svc == naming.dns_label_name(name, letter_first=True)


def test_names_stay_what_the_operator_has_always_made() -> None:
    # Pinned from the operator's builders before the functions moved here: a changed name would orphan
    # the Services, Jobs and CronJobs of existing resources.
    assert naming.model_deployment_service_name("iris.v2") == "iris-v2-738f7ad0"
    assert naming.model_deployment_service_name("1st-model") == "x1st-model-d39da9db"
    assert naming.model_deployment_service_name("a.b") == "a-b-2e7336dc"
    assert naming.model_deployment_service_name("a-b") == "a-b"
    assert naming.dns_label_name("1st-model", max_len=56) == "1st-model"
    assert naming.dns_label_name("iris.v2", "rdzv", letter_first=True) == "iris-v2-c1dead68-rdzv"
    assert naming.child_name("iris.v2", "drift-check") == "iris.v2-drift-check"
    assert naming.child_name("9" * 253, "drift-check") == "9" * 42 + "-694204d8-drift-check"
    assert naming.model_deployment_service_name("a" * 60 + ".b") == "a" * 54 + "-604ffdff"
