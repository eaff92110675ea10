"""Kubeloop's local node agent: a kubelet, scheduler and kube-proxy for one machine, without a container engine.

Pods run as local processes in their own network, mount and UTS namespaces; see DESIGN.md §5 and
hack/nodeagent/README.md. Entry point: ``python -m nodeagent`` from hack/ (``make cluster-up`` runs it).
"""
