"""Kubeloop's REST facade: turns requests into TrainingJob/ModelDeployment/DriftMonitor resources, and
serves datasets, the model registry, training logs and predictions, with Kubernetes-native auth."""

__version__ = "0.1.0"
