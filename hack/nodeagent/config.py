"""Configuration of the node agent: ``config.yaml`` next to this file, merged with an override file."""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"
CONFIG_ENV = "KUBELOOP_NODEAGENT_CONFIG"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def venv_bin() -> Path:
    """The workspace virtualenv's bin directory (that of the interpreter running the agent)."""
    return Path(sys.executable).parent


@dataclass(frozen=True)
class ImageRule:
    pattern: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ResolvedImage:
    """What a mapped (or faked) image runs."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    image_id: str
    fake: bool = False


def normalize_image(image: str) -> str:
    """``docker.io/library/python:3.11@sha256:..`` -> ``python``; ``ghcr.io/x/y:1`` -> ``x/y``."""
    name = image.split("@", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    name = "/".join(parts)
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rindex(":")]
    if name.startswith("library/"):
        name = name[len("library/") :]
    return name


@dataclass
class Config:
    node_name: str
    capacity: dict[str, str]
    labels: dict[str, str]
    taints: list[dict[str, Any]]
    kubelet_port: int
    bridge: str
    pod_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network
    guard_cidrs: list[ipaddress.IPv4Network]
    nft_table: str
    prefix: str
    route_proto: int
    scheduler_enabled: bool
    proxy_enabled: bool
    manage_system_services: bool
    system_namespace: str
    system_services: dict[str, dict[str, int]]
    backoff_initial: float
    backoff_max: float
    fake_images: str
    images: list[ImageRule] = field(default_factory=list)
    source: list[str] = field(default_factory=list)

    @property
    def bridge_ip(self) -> str:
        return str(next(self.pod_cidr.hosts()))

    def service_ip(self, offset: int) -> str:
        return str(self.service_cidr.network_address + offset)

    @property
    def kubernetes_service_ip(self) -> str:
        return self.service_ip(1)

    def resolve_image(self, image: str, restart_policy: str) -> ResolvedImage | None:
        name = normalize_image(image)
        venv = str(venv_bin())
        for rule in self.images:
            if fnmatch.fnmatchcase(name, rule.pattern):
                return ResolvedImage(
                    entrypoint=tuple(a.replace("{venv}", venv) for a in rule.entrypoint),
                    cmd=tuple(a.replace("{venv}", venv) for a in rule.cmd),
                    env=tuple((k, v.replace("{venv}", venv)) for k, v in rule.env),
                    image_id=f"kubeloop-image://{rule.pattern}",
                )
        mode = self.fake_images
        if mode == "auto":
            mode = "run" if restart_policy == "Always" else "succeed"
        if mode == "run":
            return ResolvedImage((), ("/bin/sleep", "infinity"), (), "kubeloop-image://fake-run", fake=True)
        if mode == "succeed":
            return ResolvedImage((), ("/bin/true",), (), "kubeloop-image://fake-succeed", fake=True)
        return None


def load(path: str | os.PathLike[str] | None = None) -> Config:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text()) or {}
    sources = [str(DEFAULT_CONFIG)]
    override = path or os.environ.get(CONFIG_ENV)
    if override:
        raw = _merge(raw, yaml.safe_load(Path(override).read_text()) or {})
        sources.append(str(override))
    net = raw.get("network", {})
    capacity = {k: str(v) for k, v in (raw.get("capacity") or {}).items()}
    if capacity.get("cpu", "auto") == "auto":
        capacity["cpu"] = str(os.cpu_count() or 1)
    if capacity.get("memory", "auto") == "auto":
        capacity["memory"] = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki"
    capacity.setdefault("pods", "110")
    images = [
        ImageRule(
            pattern=str(r["pattern"]),
            entrypoint=tuple(str(a) for a in r.get("entrypoint") or ()),
            cmd=tuple(str(a) for a in r.get("cmd") or ()),
            env=tuple((str(k), str(v)) for k, v in (r.get("env") or {}).items()),
        )
        for r in raw.get("images") or []
    ]
    fake = str(raw.get("fakeImages", "off")).lower()
    if fake in ("false", "no"):
        fake = "off"
    if fake not in ("off", "run", "succeed", "auto"):
        raise ValueError(f"fakeImages must be off, run, succeed or auto, not {fake!r}")
    prefix = str(net.get("prefix", "kl"))
    if not prefix.isalnum() or len(prefix) > 4:
        raise ValueError("network.prefix must be 1-4 alphanumeric characters")
    return Config(
        node_name=str(raw.get("nodeName", "kubeloop-node")),
        capacity=capacity,
        labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
        taints=list(raw.get("taints") or []),
        kubelet_port=int(raw.get("kubeletPort", 10250)),
        bridge=str(net.get("bridge", "klbr0")),
        pod_cidr=ipaddress.IPv4Network(net.get("podCIDR", "10.244.0.0/24")),
        service_cidr=ipaddress.IPv4Network(net.get("serviceCIDR", "10.96.0.0/16")),
        guard_cidrs=[ipaddress.IPv4Network(c) for c in net.get("guardCIDRs") or []],
        nft_table=str(net.get("nftTable", "kubeloop")),
        prefix=prefix,
        route_proto=int(net.get("routeProto", 66)),
        scheduler_enabled=bool((raw.get("scheduler") or {}).get("enabled", True)),
        proxy_enabled=bool((raw.get("proxy") or {}).get("enabled", True)),
        manage_system_services=bool(raw.get("manageSystemServices", True)),
        system_namespace=str(raw.get("systemNamespace", "kubeloop-system")),
        system_services={
            str(k): {kk: int(vv) for kk, vv in v.items()}
            for k, v in (raw.get("systemServices") or {}).items()
        },
        backoff_initial=float((raw.get("backoff") or {}).get("initialSeconds", 10)),
        backoff_max=float((raw.get("backoff") or {}).get("maxSeconds", 300)),
        fake_images=fake,
        images=images,
        source=sources,
    )
