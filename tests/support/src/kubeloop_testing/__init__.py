"""Test support shared by Kubeloop's test suites and benchmarks.

It lives in its own distribution (``kubeloop-testing``), installed only by the workspace's dev
dependency group, so that no product wheel carries test code: :mod:`.storage` (an in-memory
:class:`kubeloop.storage.ObjectStore` with failure injection) and :mod:`.onnx_models` (small
Kubeloop-format ONNX models and matching records). Component-specific pytest fixtures stay in each
component's ``tests/conftest.py``.
"""
