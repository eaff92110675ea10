"""Pure builders: a resource's spec and identity in, the manifests of its children out.

No I/O and no kopf/kubernetes imports here (an import-linter contract says so), so every builder is
unit-tested on plain data. One module per kind; ``common`` holds what every kind needs (owner
references, labels, deterministic names, resources and tolerations).
"""
