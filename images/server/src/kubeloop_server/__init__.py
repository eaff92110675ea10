"""Kubeloop's inference server: ONNX Runtime behind the Open Inference Protocol v2 and /forward."""

__version__ = "0.1.0"
