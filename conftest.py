"""Shared pytest fixtures: the local cluster plugin (hack/localcluster/pytest_fixtures.py).

Fixtures: ``kube_cluster``, ``k8s_namespace``, ``minio_server``, ``s3_prefix``, ``mlflow_server``; the node agent (hack/nodeagent/pytest_fixtures.py): ``node_agent``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HACK = str(Path(__file__).resolve().parent / "hack")
if _HACK not in sys.path:
    sys.path.insert(0, _HACK)
# The operator's tests share fakes across modules (``from test_reconcile_modeldeployment import FakeKube``).
# A relative import cannot do it in the whole suite: importlib mode names operator/tests and api/tests
# both ``tests``, so their modules (and a conftest in each) collide. Their directory is on the path instead.
_OPERATOR_TESTS = str(Path(__file__).resolve().parent / "operator" / "tests")
if _OPERATOR_TESTS not in sys.path:
    sys.path.append(_OPERATOR_TESTS)

pytest_plugins = ["localcluster.pytest_fixtures", "nodeagent.pytest_fixtures"]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: object, items: list) -> None:  # type: ignore[type-arg]
    """Tests marked ``gpu`` skip cleanly (and visibly) on machines without a CUDA device."""
    import pytest

    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in gpu_items:
        item.add_marker(skip)
