"""Kubeloop's operator: reconciles TrainingJob, ModelDeployment and DriftMonitor resources (kopf).

Layout: ``settings`` (configuration), ``k8s`` (the one module that calls the Kubernetes API),
``builders`` (pure: spec -> child manifests), ``status`` (pure: children -> status), ``reconcile``
(one reconciler per kind, wiring the three), ``handlers`` (thin kopf handlers), ``runtime``
(shared state: clients, status writer, events), ``metrics``, ``errors`` and ``__main__``.
"""

__version__ = "0.1.0"
