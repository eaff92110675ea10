"""Kubeloop."""
