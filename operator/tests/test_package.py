"""The member package imports under its own name and leaves the standard library alone."""

import importlib
import operator


def test_package_imports_without_shadowing_the_standard_library() -> None:
    pkg = importlib.import_module("kubeloop_operator")
    assert pkg.__name__ == "kubeloop_operator"
    # A package called "operator" would shadow this module; ours is namespaced.
    assert operator.add(2, 3) == 5
    assert operator.__file__ is None or "kubeloop" not in operator.__file__
