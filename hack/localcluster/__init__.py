"""Local Kubernetes control plane and backing services for Kubeloop, without a container engine.

Real ``etcd``, ``kube-apiserver`` and ``kube-controller-manager`` (built from their Go modules at
pinned versions and cached outside the repository), MinIO and an MLflow tracking server, all bound
to 127.0.0.1, with their state under ``<repo>/.kubeloop``. Entry points: ``hack/cluster.py``
(``make cluster-up`` / ``cluster-down`` / ``cluster-status``) and the pytest fixtures in
:mod:`localcluster.pytest_fixtures`.
"""
