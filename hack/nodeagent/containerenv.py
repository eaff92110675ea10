"""What a container sees when it starts: its environment (service links, envFrom, env with
``valueFrom`` and ``$(VAR)`` expansion), its mounts (volumes, a private /tmp, /etc/hosts, /etc/resolv.conf,
/etc/hostname and the termination-message file) and its Linux capabilities.

The kubelet's rules, as functions of the pod, the container and the node; the only I/O is reading
referenced ConfigMaps and Secrets through the node's API client and writing the small files that are
mounted into the container.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from typing import Any

from . import dns
from .container import ConfigError, Container, Host, Obj, expand
from .kubeapi import ApiError
from .podutil import field_value, resource_value

_WORKSPACE = Path(__file__).resolve().parents[2]

# What containerd/Docker grant a non-privileged container by default.
DEFAULT_CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
]


def pod_with_status(pod: Obj, pod_ip: str, host_ip: str) -> Obj:
    """The pod with the IPs the agent knows before the API does (for downward-API fieldRefs)."""
    pod = dict(pod)
    status = dict(pod.get("status") or {})
    status.update(
        {
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}] if pod_ip else [],
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
        }
    )
    pod["status"] = status
    return pod


async def _get_ref(host: Host, ns: str, plural: str, name: str, optional: bool) -> Obj | None:
    try:
        return await host.node_api.get(f"/api/v1/namespaces/{ns}/{plural}/{name}")
    except ApiError as exc:
        if exc.status == 404 and optional:
            return None
        kind = "secret" if plural == "secrets" else "configmap"
        raise ConfigError(
            f'{kind} "{name}" not found' if exc.status == 404 else f"{kind} {name!r}: {exc.message}"
        ) from exc


async def container_env(host: Host, pod: Obj, c: Container, pod_ip: str) -> dict[str, str]:
    """The container's environment from the pod spec; raises :class:`ConfigError` like the kubelet's
    CreateContainerConfigError when a referenced ConfigMap, Secret or key is missing."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    spec = pod["spec"]
    if spec.get("enableServiceLinks", True):
        env.update(host.service_env(ns))
    else:
        env.update({k: v for k, v in host.service_env(ns).items() if k.startswith("KUBERNETES_")})
    for src in c.spec.get("envFrom") or []:
        prefix = src.get("prefix") or ""
        if "configMapRef" in src:
            ref = src["configMapRef"]
            obj = await _get_ref(host, ns, "configmaps", ref["name"], bool(ref.get("optional")))
            for k, v in ((obj or {}).get("data") or {}).items():
                env[prefix + k] = v
        elif "secretRef" in src:
            ref = src["secretRef"]
            obj = await _get_ref(host, ns, "secrets", ref["name"], bool(ref.get("optional")))
            for k, v in ((obj or {}).get("data") or {}).items():
                env[prefix + k] = base64.b64decode(v).decode(errors="replace")
    for e in c.spec.get("env") or []:
        name = e["name"]
        if "value" in e:
            env[name] = expand(str(e.get("value") or ""), env)
            continue
        src = e.get("valueFrom")
        if not src:
            env[name] = ""
            continue
        if "fieldRef" in src:
            env[name] = field_value(
                pod_with_status(pod, pod_ip, host.cfg.bridge_ip), src["fieldRef"]["fieldPath"]
            )
        elif "resourceFieldRef" in src:
            env[name] = resource_value(pod, src["resourceFieldRef"], c.name, host.node_allocatable)
        elif "configMapKeyRef" in src or "secretKeyRef" in src:
            is_secret = "secretKeyRef" in src
            ref = src["secretKeyRef" if is_secret else "configMapKeyRef"]
            obj = await _get_ref(
                host, ns, "secrets" if is_secret else "configmaps", ref["name"], bool(ref.get("optional"))
            )
            if obj is None:
                continue
            data = obj.get("data") or {}
            if ref["key"] not in data:
                if ref.get("optional"):
                    continue
                kind = "secret" if is_secret else "configmap"
                raise ConfigError(
                    f"couldn't find key {ref['key']} in {kind.capitalize() if not is_secret else 'Secret'} {ns}/{ref['name']}"
                )
            value = data[ref["key"]]
            if is_secret:
                value = base64.b64decode(value).decode(errors="replace")
            env[name] = value
    return env


def _hosts_file(host: Host, pod: Obj, pod_dir: Path, pod_ip: str) -> Path:
    path = pod_dir / "etc-hosts"
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    hostname = pod["spec"].get("hostname") or name
    sub = pod["spec"].get("subdomain")
    fqdn = f"{hostname}.{sub}.{ns}.svc.cluster.local" if sub else ""
    lines = [
        "# Kubernetes-managed hosts file (kubeloop node agent).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod_ip}\t{fqdn + chr(9) if fqdn else ''}{hostname}",
    ]
    for ip, names in host.hosts_entries():
        lines.append(f"{ip}\t{' '.join(names)}")
    for alias in pod["spec"].get("hostAliases") or []:
        lines.append(f"{alias['ip']}\t{' '.join(alias.get('hostnames') or [])}")
    path.write_text("\n".join(lines) + "\n")
    return path


def container_mounts(
    host: Host, pod: Obj, c: Container, pod_dir: Path, pod_ip: str, volume_paths: dict[str, Path]
) -> list[Obj]:
    """Bind mounts for the launcher, shallowest target first; missing mount points are created on
    the host (as a runtime does in the container's root)."""
    mounts: list[Obj] = []
    targets: set[str] = set()
    for vm in c.spec.get("volumeMounts") or []:
        src = volume_paths.get(vm["name"])
        if src is None:
            raise ConfigError(f"volume {vm['name']!r} not found in the pod's volumes")
        sub = vm.get("subPath") or ""
        if sub:
            if sub.startswith("/") or ".." in sub.split("/"):
                raise ConfigError(f"invalid subPath {sub!r}")
            src = src / sub
            if not src.exists():
                src.mkdir(parents=True)
        target = os.path.normpath(vm["mountPath"])
        mounts.append({"source": str(src), "target": target, "readOnly": bool(vm.get("readOnly"))})
        targets.add(target)
    tmp = pod_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    hostname_file = pod_dir / "etc-hostname"
    hostname_file.write_text((pod["spec"].get("hostname") or pod["metadata"]["name"])[:63] + "\n")
    extra = [
        ("/tmp", tmp),
        ("/etc/hosts", _hosts_file(host, pod, pod_dir, pod_ip)),
        ("/etc/hostname", hostname_file),
    ]
    resolv = dns.resolv_conf(pod, host.cfg.bridge_ip)
    if resolv is not None:  # dnsPolicy Default: the node's own file
        resolv_file = pod_dir / "etc-resolv.conf"
        resolv_file.write_text(resolv)
        extra.append(("/etc/resolv.conf", resolv_file))
    # Containers run this workspace's code: when it lives under /tmp (a fresh CI clone often
    # does), the pod's private /tmp would hide it, so bind the workspace back over it.
    for keep in {_WORKSPACE, Path(sys.prefix).resolve()}:
        if keep.is_relative_to("/tmp"):
            extra.append((str(keep), keep))
    term = c.spec.get("terminationMessagePath") or "/dev/termination-log"
    c.run_dir.mkdir(parents=True, exist_ok=True)
    tfile = c.run_dir / f"termination-{c.restart_count}"
    tfile.write_bytes(b"")
    tfile.chmod(0o666)
    extra.append((os.path.normpath(term), tfile))
    for target, src in extra:
        if target not in targets:
            mounts.append({"source": str(src), "target": target, "readOnly": False})
            targets.add(target)
    mounts.sort(key=lambda m: m["target"].count("/"))
    for m in mounts:
        nested = any(m["target"] != t and m["target"].startswith(t.rstrip("/") + "/") for t in targets)
        if not nested and not os.path.exists(m["target"]):
            host.ensure_mountpoint(m["target"], is_dir=Path(m["source"]).is_dir())
    return mounts


def capabilities(ctx: dict[str, Any]) -> list[str] | None:
    """The container runtime's default capability set adjusted by a securityContext; None (all of
    them) for a privileged container."""
    if ctx.get("privileged"):
        return None
    caps = ctx.get("capabilities") or {}
    drop = {str(c).upper().removeprefix("CAP_") for c in caps.get("drop") or []}
    add = {str(c).upper().removeprefix("CAP_") for c in caps.get("add") or []}
    base = set() if "ALL" in drop else set(DEFAULT_CAPABILITIES)
    return sorted((base | add) - drop)
