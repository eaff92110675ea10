"""Pod networking: a bridge, one network namespace + veth per pod, kube-proxy-style nftables DNAT.

Layout (defaults): bridge ``klbr0`` with 10.244.0.1/24; each pod a netns ``kl-<pod uid>`` whose
``eth0`` (the peer of host-side ``klv<hash>``) has an address from 10.244.0.0/24 and exactly two
routes: the pod subnet (on-link) and the service range via the bridge IP. There is no default route
in a pod, so a pod cannot address anything but pods, Services and (through DNAT) the host's loopback
services the agent allows. On the host, the service range is routed to the bridge, the wider ranges
get blackhole routes, and the nftables table ``ip kubeloop`` drops anything from the bridge to any
other interface. Forwarding and route_localnet are switched on for the bridge only.

Every route the agent adds carries routing protocol ``routeProto`` (66), so teardown finds them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .config import Config

log = logging.getLogger("nodeagent.net")

NETNS_DIR = Path("/run/netns")


class NetError(RuntimeError):
    pass


def _run(
    cmd: Sequence[str], *, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    _sysctl_path(name).write_text(value)


def netns_name(cfg: Config, uid: str) -> str:
    return f"{cfg.prefix}-{uid}"


def veth_name(cfg: Config, uid: str) -> str:
    return f"{cfg.prefix}v{hashlib.sha256(uid.encode()).hexdigest()[:10]}"


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def list_links(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))
    except FileNotFoundError:
        return []


def list_netns(cfg: Config) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(f"{cfg.prefix}-"))
    except FileNotFoundError:
        return []


def netns_pids(ns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_netns_processes(ns: str, grace: float = 2.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process in the namespace; returns the pids that were found."""
    pids = netns_pids(ns)
    if not pids:
        return []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and netns_pids(ns):
        time.sleep(0.05)
    for pid in netns_pids(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and netns_pids(ns):
        time.sleep(0.05)
    return pids


# --------------------------------------------------------------------------- host side
def host_up(cfg: Config, state_file: Path) -> None:
    """Create (or repair) the bridge, routes, sysctls and base nftables table. Idempotent."""
    br, ip = cfg.bridge, cfg.bridge_ip
    created = not link_exists(br)
    if created:
        _run(["ip", "link", "add", br, "type", "bridge"])
    # No IPv6 on the bridge: pods are IPv4 only and nothing should be routed for them over IPv6.
    with contextlib.suppress(OSError):
        write_sysctl(f"net.ipv6.conf.{br}.disable_ipv6", "1")
    addr = f"{ip}/{cfg.pod_cidr.prefixlen}"
    have = _run(["ip", "-4", "-o", "addr", "show", "dev", br]).stdout
    if f" {addr} " not in have:
        _run(["ip", "addr", "replace", addr, "dev", br])
    _run(["ip", "link", "set", br, "up"])
    # Record the values this agent changes (all per-interface, so they also vanish with the bridge).
    saved: dict[str, str] = {}
    if state_file.is_file():
        saved = json.loads(state_file.read_text()).get("sysctls", {})
    changes = {
        f"net.ipv4.conf.{br}.forwarding": "1",
        f"net.ipv4.conf.{br}.route_localnet": "1",
        f"net.ipv4.conf.{br}.send_redirects": "0",
    }
    for name, value in changes.items():
        old = read_sysctl(name)
        if old is not None and name not in saved:
            saved[name] = old
        write_sysctl(name, value)
    proto = str(cfg.route_proto)
    if cfg.proxy_enabled:
        _run(["ip", "route", "replace", str(cfg.service_cidr), "dev", br, "src", ip, "proto", proto])
    for guard in cfg.guard_cidrs:
        _run(["ip", "route", "replace", "blackhole", str(guard), "proto", proto, "metric", "4242"])
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(
        json.dumps(
            {"bridge": br, "bridgeCreated": created, "sysctls": saved, "table": cfg.nft_table}, indent=2
        )
    )


def our_routes(cfg: Config) -> list[str]:
    out = _run(
        ["ip", "-4", "route", "show", "table", "all", "proto", str(cfg.route_proto)], check=False
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def host_down(cfg: Config, state_file: Path) -> list[str]:
    """Remove everything :func:`host_up` and the pods made. Returns a list of what was removed."""
    removed: list[str] = []
    for ns in list_netns(cfg):
        pids = kill_netns_processes(ns)
        if pids:
            removed.append(f"processes {pids} in netns {ns}")
    for link in list_links(f"{cfg.prefix}v"):
        _run(["ip", "link", "del", link], check=False)
        removed.append(f"link {link}")
    for ns in list_netns(cfg):
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(f"netns {ns}")
    saved: dict[str, str] = {}
    if state_file.is_file():
        with contextlib.suppress(ValueError):
            saved = json.loads(state_file.read_text()).get("sysctls", {})
    for name, value in saved.items():
        if _sysctl_path(name).exists():
            with contextlib.suppress(OSError):
                write_sysctl(name, value)
    if _run(["nft", "list", "table", "ip", cfg.nft_table], check=False).returncode == 0:
        _run(["nft", "delete", "table", "ip", cfg.nft_table])
        removed.append(f"nft table ip {cfg.nft_table}")
    for route in our_routes(cfg):
        _run(["ip", "route", "del", *route.split()], check=False)
        removed.append(f"route {route}")
    if link_exists(cfg.bridge):
        _run(["ip", "link", "del", cfg.bridge])
        removed.append(f"bridge {cfg.bridge}")
    # Deleting a namespace frees its interfaces asynchronously; wait until the kernel is done.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and list_links(f"{cfg.prefix}v"):
        time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()
    return removed


# --------------------------------------------------------------------------- pod sandboxes
@dataclass(frozen=True)
class Sandbox:
    netns: str
    veth: str
    ip: str


def sandbox_up(cfg: Config, uid: str, ip: str) -> Sandbox:
    ns, veth = netns_name(cfg, uid), veth_name(cfg, uid)
    if (NETNS_DIR / ns).exists() and link_exists(veth):
        return Sandbox(ns, veth, ip)
    sandbox_down(cfg, uid)
    host_batch = "\n".join(
        [
            f"netns add {ns}",
            f"link add {veth} type veth peer name eth0 netns {ns}",
            f"link set dev {veth} addrgenmode none",
            f"link set dev {veth} master {cfg.bridge}",
            f"link set dev {veth} type bridge_slave hairpin on",
            f"link set dev {veth} up",
        ]
    )
    _run(["ip", "-batch", "-"], input=host_batch + "\n")
    pod_batch = "\n".join(
        [
            "link set dev lo up",
            "link set dev eth0 addrgenmode none",
            f"addr add {ip}/{cfg.pod_cidr.prefixlen} dev eth0",
            "link set dev eth0 up",
            f"route add {cfg.service_cidr} via {cfg.bridge_ip} dev eth0",
        ]
    )
    _run(["ip", "-n", ns, "-batch", "-"], input=pod_batch + "\n")
    return Sandbox(ns, veth, ip)


def sandbox_down(cfg: Config, uid: str) -> None:
    ns, veth = netns_name(cfg, uid), veth_name(cfg, uid)
    if (NETNS_DIR / ns).exists():
        kill_netns_processes(ns)
    if link_exists(veth):
        _run(["ip", "link", "del", veth], check=False)
    if (NETNS_DIR / ns).exists():
        _run(["ip", "netns", "del", ns], check=False)


class IPAM:
    """Pod addresses from the pod CIDR (the first host address is the bridge's)."""

    def __init__(self, cfg: Config) -> None:
        hosts = list(cfg.pod_cidr.hosts())
        self._free = [str(h) for h in hosts[1:]]
        self._used: dict[str, str] = {}

    def reserve(self, uid: str, ip: str) -> None:
        if ip in self._free:
            self._free.remove(ip)
        self._used[uid] = ip

    def allocate(self, uid: str) -> str:
        if uid in self._used:
            return self._used[uid]
        if not self._free:
            raise NetError("pod CIDR exhausted")
        ip = self._free.pop(0)
        self._used[uid] = ip
        return ip

    def release(self, uid: str) -> None:
        ip = self._used.pop(uid, None)
        if ip is not None:
            self._free.append(ip)


# --------------------------------------------------------------------------- nftables
@dataclass(frozen=True)
class ServicePort:
    cluster_ip: str
    protocol: str  # tcp / udp
    port: int
    endpoints: tuple[tuple[str, int], ...]
    name: str  # ns/svc:port, for comments


def slice_endpoints(
    slices: Iterable[dict[str, Any]], port_name: str, protocol: str
) -> tuple[tuple[str, int], ...]:
    """A Service port's endpoints out of its EndpointSlices, as kube-proxy picks them: the ready ones
    (``ready`` unset counts as ready); when none is ready, the serving ones that are terminating, so a
    Service whose every pod is shutting down still reaches the pods that keep serving (KEP-1669) instead
    of refusing connections; none: the Service refuses. Sorted, without duplicates."""
    ready: set[tuple[str, int]] = set()
    terminating: set[tuple[str, int]] = set()
    for sl in slices:
        sp = next(
            (
                x
                for x in sl.get("ports") or []
                if (x.get("name") or "") == port_name and (x.get("protocol") or "TCP").lower() == protocol
            ),
            None,
        )
        if sp is None or sp.get("port") is None:
            continue
        port = int(sp["port"])
        for ep in sl.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is not False:
                into = ready
            # serving unset defers to ready, which is False here
            elif cond.get("terminating") is True and cond.get("serving") is True:
                into = terminating
            else:
                continue
            into.update((addr, port) for addr in ep.get("addresses") or [])
    return tuple(sorted(ready or terminating))


# What reaches the service range untranslated is refused or dropped as kube-proxy does, and logged to the kernel's
# ring buffer (dmesg), rate-limited, under this prefix with the packet's conntrack state. A new connection
# ("ct=new": a Service port without endpoints, or an unknown ClusterIP) is rejected: "connection refused".
# Any other packet ("invalid" or "untracked": conntrack would not track it, so it was never translated) is
# dropped: rejecting it would send an ICMP error that aborts whatever socket has its addresses, where
# kube-proxy's rules let TCP retransmit. Resets from pods on translated connections are logged too: a
# "connection refused" from a pod that does not listen. Tests that must see no failed request print these.
LOG_PREFIX: Final = "kubeloop-proxy"
_LOG_LIMIT: Final = "limit rate 20/second burst 40 packets"


def _service_range_guard(match: str, where: str) -> list[str]:
    """Rules for packets that ``match`` (the service range) untranslated: new connections rejected,
    everything else dropped, each logged first with its conntrack state."""
    rules = [
        f'    {match} ct state new {_LOG_LIMIT} log prefix "{LOG_PREFIX} {where} reject ct=new: "',
        f"    {match} ct state new reject",
    ]
    rules += [
        f'    {match} ct state {st} {_LOG_LIMIT} log prefix "{LOG_PREFIX} {where} drop ct={st}: "'
        for st in ("invalid", "untracked", "established,related")
    ]
    return [*rules, f"    {match} drop"]


_KERNEL_LINE = re.compile(r"^\[\s*(\d+\.\d+)\]")


def _kernel_log() -> list[tuple[float, str]]:
    """The kernel's ring buffer (``dmesg``) as (seconds since boot, line); NetError when unreadable."""
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        raise NetError(f"dmesg: {e}") from e
    if out.returncode != 0:
        raise NetError(f"dmesg: {out.stderr.strip()[:200]}")
    return [(float(m.group(1)), line) for line in out.stdout.splitlines() if (m := _KERNEL_LINE.match(line))]


def kernel_log_mark() -> float | None:
    """Where the kernel's log ends now: :func:`proxy_log` after it shows only what came later."""
    try:
        log = _kernel_log()
    except NetError:
        return None
    return log[-1][0] if log else None


def proxy_log(after: float | None = None) -> list[str]:
    """The proxy's lines in the kernel's log (:data:`LOG_PREFIX`) after ``after`` (a
    :func:`kernel_log_mark`), or one line saying why the log cannot be read."""
    try:
        log = _kernel_log()
    except NetError as e:
        return [str(e)]
    return [line for t, line in log if (after is None or t > after) and LOG_PREFIX in line]


def _chain_id(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:12]


def render_nft(cfg: Config, host_ports: Iterable[int], services: Sequence[ServicePort]) -> str:
    """The whole ``table ip <nftTable>``; loaded atomically (delete + add in one transaction)."""
    t, br, bip = cfg.nft_table, cfg.bridge, cfg.bridge_ip
    pods, svcs = str(cfg.pod_cidr), str(cfg.service_cidr)
    hp = sorted(set(host_ports))
    guards = ", ".join(str(g) for g in [*cfg.guard_cidrs, cfg.pod_cidr, cfg.service_cidr])
    lines = [f"table ip {t} {{", "  set host_ports { type inet_service;"]
    if hp:
        lines.append(f"    elements = {{ {', '.join(map(str, hp))} }}")
    lines.append("  }")
    elements: list[str] = []
    chains: list[str] = []
    for sp in services if cfg.proxy_enabled else ():
        proto = sp.protocol.lower()
        if proto not in ("tcp", "udp"):
            continue
        sid = _chain_id(sp.cluster_ip, proto, sp.port)
        if not sp.endpoints:
            continue  # falls through to the reject rules: "connection refused", as kube-proxy does
        elements.append(f"{sp.cluster_ip} . {proto} . {sp.port} : goto svc_{sid}")
        eps = []
        for i, (addr, port) in enumerate(sp.endpoints):
            eid = f"ep_{sid}_{i}"
            target = f"127.0.0.1:{port}" if addr == bip and port in hp else f"{addr}:{port}"
            chains.append(f"  chain {eid} {{\n    meta l4proto {proto} dnat to {target}\n  }}")
            eps.append(f"{i} : goto {eid}")
        chains.append(
            f'  chain svc_{sid} {{\n    comment "{sp.name}"\n'
            f"    numgen random mod {len(sp.endpoints)} vmap {{ {', '.join(eps)} }}\n  }}"
        )
    lines.append("  map service_ports {")
    lines.append("    type ipv4_addr . inet_proto . inet_service : verdict;")
    if elements:
        lines.append("    elements = { " + ",\n      ".join(elements) + " }")
    lines.append("  }")
    lines += chains
    hostport_rule = f"ip daddr {bip} tcp dport @host_ports dnat to 127.0.0.1"
    lines += [
        "  chain services {",
        "    ip daddr . meta l4proto . th dport vmap @service_ports",
        "  }",
        "  chain nat_prerouting {",
        "    type nat hook prerouting priority -100; policy accept;",
        f'    iifname "{br}" ip daddr {svcs} jump services',
        f'    iifname "{br}" {hostport_rule}',
        "  }",
        "  chain nat_output {",
        "    type nat hook output priority -100; policy accept;",
        f"    ip daddr {svcs} jump services",
        f"    {hostport_rule}",
        "  }",
        "  chain nat_postrouting {",
        "    type nat hook postrouting priority 100; policy accept;",
        # Pod -> Service -> pod (hairpin included): answers must come back through this host.
        f'    oifname "{br}" ip saddr {pods} ct status dnat masquerade',
        "  }",
        "  chain filter_input {",
        "    type filter hook input priority 0; policy accept;",
        # Before the accept: a reset from a pod on a translated (Service) connection is logged.
        f'    iifname "{br}" tcp flags & rst == rst ct status dnat {_LOG_LIMIT} '
        f'log prefix "{LOG_PREFIX} reset from pod: "',
        f'    iifname "{br}" ct state established,related accept',
        f'    iifname "{br}" ct status dnat ip daddr 127.0.0.1 tcp dport @host_ports accept',
        # The cluster DNS (nodeagent.dns) on the bridge address.
        f'    iifname "{br}" ip daddr {bip} meta l4proto {{ tcp, udp }} th dport 53 accept',
        f'    iifname "{br}" meta l4proto tcp reject with tcp reset',
        f'    iifname "{br}" reject with icmp type admin-prohibited',
        "  }",
        "  chain filter_forward {",
        "    type filter hook forward priority 0; policy accept;",
        *_service_range_guard(f'iifname "{br}" ip daddr {svcs}', "pod->service"),
        f'    iifname "{br}" oifname "{br}" accept',
        f'    iifname "{br}" drop',
        f'    oifname "{br}" drop',
        f"    ip daddr {{ {guards} }} drop",
        f"    ip saddr {{ {guards} }} drop",
        "  }",
        "  chain filter_output {",
        "    type filter hook output priority 0; policy accept;",
        f'    oifname "{br}" icmp type redirect drop',
        *_service_range_guard(f"ip daddr {svcs}", "host->service"),
        f'    oifname != {{ "lo", "{br}" }} ip daddr {{ {guards} }} drop',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def apply_nft(cfg: Config, ruleset: str) -> None:
    exists = _run(["nft", "list", "table", "ip", cfg.nft_table], check=False).returncode == 0
    prefix = f"delete table ip {cfg.nft_table}\n" if exists else ""
    _run(["nft", "-f", "-"], input=prefix + ruleset)


def is_ipv4(value: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)
    except ValueError:
        return False
