"""Cluster DNS for the local node's pods: what CoreDNS's ``kubernetes`` plugin answers on a real cluster.

Without it a pod resolved through the node's own resolv.conf, whose nameserver the pod network cannot
reach: every name and address missing from the pod's /etc/hosts failed at
once with EAI_AGAIN. Those were every Service outside the system namespace, every peer pod (a headless
Service's hostnames), and every reverse lookup; torch's c10d, for one, warns that it cannot name its
peers while ranks rendezvous. On a real cluster (kind included) CoreDNS answers all of them.

Served on the bridge address (UDP and TCP, port 53), authoritative for the cluster domain and for the
pod and service ranges' reverse zones, with the records of the Kubernetes DNS specification:

- ``<service>.<ns>.svc.<domain>``: A, the ClusterIP; for a headless Service the ready endpoints'
  addresses (and the not-ready ones too with ``publishNotReadyAddresses``);
- ``<hostname>.<service>.<ns>.svc.<domain>`` for a headless Service's endpoints with a hostname, and
  ``<a-b-c-d>.<service>.<ns>.svc.<domain>`` for the others;
- ``<a-b-c-d>.<ns>.pod.<domain>``: A for any address in the pod range (CoreDNS's ``pods insecure``);
- PTR for ClusterIPs and headless endpoints (the names above); other addresses in the two ranges are
  NXDOMAIN.

Names outside the cluster domain are REFUSED at once: nothing is forwarded upstream, since the local
cluster sends no traffic off this machine. Answers carry a TTL of 5 s, as CoreDNS's plugin does.

The message handling (:func:`parse_query`, :func:`reply`) and the records (:class:`Records`) are pure;
:class:`DnsServer` is the asyncio I/O around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from .network import is_ipv4

log = logging.getLogger("nodeagent.dns")
Obj = dict[str, Any]

TYPE_A = 1
TYPE_PTR = 12
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
TTL = 5
PORT = 53  # resolv.conf cannot name another
UDP_LIMIT = 512  # answers that do not fit go truncated; the client asks again over TCP
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    question: bytes  # as the client sent it, echoed in the answer


class MalformedQueryError(Exception):
    """A message that is not a standard query this server can read (its answer: ``rcode``)."""

    def __init__(self, message: str, rcode: int = FORMERR) -> None:
        super().__init__(message)
        self.rcode = rcode


def parse_query(data: bytes) -> Query:
    """One DNS query (RFC 1035 section 4.1): one question, no compression in it."""
    if len(data) < 12:
        raise MalformedQueryError(f"message of {len(data)} bytes is shorter than a header")
    qid, flags, qdcount = struct.unpack_from("!HHH", data)
    if flags & 0x8000:
        raise MalformedQueryError("message is a response, not a query")
    if (flags >> 11) & 0xF != 0:
        raise MalformedQueryError("only standard queries (opcode 0) are served", NOTIMP)
    if qdcount != 1:
        raise MalformedQueryError(f"a query must ask one question, this one asks {qdcount}")
    labels: list[str] = []
    pos = 12
    while True:
        if pos >= len(data):
            raise MalformedQueryError("question name runs past the message")
        n = data[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0:
            raise MalformedQueryError("compressed or extended label in the question")
        if pos + n > len(data):
            raise MalformedQueryError("question label runs past the message")
        labels.append(data[pos : pos + n].decode("ascii", errors="replace").lower())
        pos += n
    if pos + 4 > len(data):
        raise MalformedQueryError("question type and class run past the message")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    return Query(qid, flags, ".".join(labels), qtype, qclass, data[12 : pos + 4])


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.split("."):
        if label:
            raw = label.encode("ascii")
            out += bytes([len(raw)]) + raw
    return bytes(out) + b"\0"


def reply(
    q: Query, rcode: int, answers: Iterable[tuple[int, bytes]] = (), *, limit: int | None = UDP_LIMIT
) -> bytes:
    """The answer to ``q``: ``answers`` are (type, rdata) records for the question's own name. Past
    ``limit`` bytes the answer goes without records and with TC set (RFC 1035 4.2.1)."""
    records = [
        b"\xc0\x0c" + struct.pack("!HHIH", rtype, CLASS_IN, TTL, len(rdata)) + rdata
        for rtype, rdata in answers
    ]
    # QR, the client's RD, RA (recursion available: what a pod's resolver expects of its nameserver),
    # AA for the zones served here.
    flags = 0x8000 | (q.flags & 0x0100) | 0x0080 | rcode
    if rcode in (NOERROR, NXDOMAIN):
        flags |= 0x0400
    msg = struct.pack("!HHHHHH", q.id, flags, 1, len(records), 0, 0) + q.question + b"".join(records)
    if limit is not None and len(msg) > limit:
        return struct.pack("!HHHHHH", q.id, flags | 0x0200, 1, 0, 0, 0) + q.question
    return msg


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP for a message whose header could be read (None: nothing to answer)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    return struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7900) | 0x0080 | rcode, 0, 0, 0, 0)


def _dashed(ip: str) -> str:
    return ip.replace(".", "-")


def _reverse(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


@dataclass
class Records:
    """The A and PTR records of a cluster's Services and endpoints (built by :meth:`build`)."""

    pod_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network
    domain: str = CLUSTER_DOMAIN
    a: dict[str, list[str]] = field(default_factory=dict)
    ptr: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        services: Iterable[Obj],
        slices: Iterable[Obj],
        pod_cidr: ipaddress.IPv4Network,
        service_cidr: ipaddress.IPv4Network,
        domain: str = CLUSTER_DOMAIN,
    ) -> Records:
        r = cls(pod_cidr, service_cidr, domain)
        headless: dict[tuple[str, str], bool] = {}  # -> publishNotReadyAddresses
        for svc in services:
            meta, spec = svc["metadata"], svc.get("spec") or {}
            ns, name = meta["namespace"], meta["name"]
            fqdn = f"{name}.{ns}.svc.{domain}"
            ip = spec.get("clusterIP")
            if spec.get("type") == "ExternalName":
                continue
            if ip in (None, "", "None"):
                headless[(ns, name)] = bool(spec.get("publishNotReadyAddresses"))
                r.a.setdefault(fqdn, [])
                continue
            for cip in spec.get("clusterIPs") or [ip]:
                if is_ipv4(cip):
                    r.a.setdefault(fqdn, []).append(cip)
                    r.ptr[_reverse(cip)] = fqdn
        for sl in slices:
            meta = sl.get("metadata") or {}
            key = (
                str(meta.get("namespace")),
                str((meta.get("labels") or {}).get("kubernetes.io/service-name")),
            )
            if key not in headless or sl.get("addressType", "IPv4") != "IPv4":
                continue
            ns, owner = key
            base = f"{owner}.{ns}.svc.{domain}"
            for ep in sl.get("endpoints") or []:
                ready = (ep.get("conditions") or {}).get("ready")
                if ready is False and not headless[key]:
                    continue
                host = ep.get("hostname")
                for addr in ep.get("addresses") or []:
                    if not is_ipv4(addr):
                        continue
                    r.a[base].append(addr)
                    own = f"{host or _dashed(addr)}.{base}"
                    r.a.setdefault(own, []).append(addr)
                    if host or _reverse(addr) not in r.ptr:
                        r.ptr[_reverse(addr)] = own
        for ips in r.a.values():
            ips[:] = sorted(set(ips), key=ipaddress.IPv4Address)
        return r

    def answer(self, name: str, qtype: int, qclass: int = CLASS_IN) -> tuple[int, list[tuple[int, bytes]]]:
        """(rcode, records) for a question; ``name`` lower case without the trailing dot."""
        if name.endswith(".in-addr.arpa"):
            ip = ".".join(reversed(name.removesuffix(".in-addr.arpa").split(".")))
            if not is_ipv4(ip) or not any(
                ipaddress.IPv4Address(ip) in r for r in (self.pod_cidr, self.service_cidr)
            ):
                return REFUSED, []
            target = self.ptr.get(name)
            if target is None:
                return NXDOMAIN, []
            if qtype != TYPE_PTR or qclass != CLASS_IN:
                return NOERROR, []
            return NOERROR, [(TYPE_PTR, encode_name(target))]
        if name != self.domain and not name.endswith("." + self.domain):
            return REFUSED, []
        ips = self.a.get(name)
        if ips is None:
            ips = self._pod(name)
        if ips is None:
            return NXDOMAIN, []
        if qtype != TYPE_A or qclass != CLASS_IN:
            return NOERROR, []  # the name exists; it has no record of that type (no IPv6 here)
        return NOERROR, [(TYPE_A, ipaddress.IPv4Address(ip).packed) for ip in ips]

    def _pod(self, name: str) -> list[str] | None:
        parts = name.removesuffix("." + self.domain).split(".")
        if len(parts) != 3 or parts[2] != "pod":
            return None
        ip = parts[0].replace("-", ".")
        if not is_ipv4(ip) or ipaddress.IPv4Address(ip) not in self.pod_cidr:
            return None
        return [ip]


def respond(data: bytes, records: Records, limit: int | None) -> bytes | None:
    """The answer to one message (None: none is sent, as for a response or a runt)."""
    try:
        q = parse_query(data)
    except MalformedQueryError as exc:
        log.debug("dns: %s", exc)
        return error_reply(data, exc.rcode)
    rcode, answers = records.answer(q.name, q.qtype, q.qclass)
    return reply(q, rcode, answers, limit=limit)


def resolv_conf(pod: Obj, nameserver: str, domain: str = CLUSTER_DOMAIN) -> str | None:
    """The pod's /etc/resolv.conf as the kubelet writes it for its ``dnsPolicy`` and ``dnsConfig``; None
    for ``Default`` (the node's own file)."""
    spec = pod.get("spec") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    cfg = spec.get("dnsConfig") or {}
    if policy == "Default":
        return None
    servers: list[str] = []
    searches: list[str] = []
    options: dict[str, str | None] = {}
    if policy != "None":  # ClusterFirst, ClusterFirstWithHostNet
        ns = pod["metadata"]["namespace"]
        servers = [nameserver]
        searches = [f"{ns}.svc.{domain}", f"svc.{domain}", domain]
        options = {"ndots": "5"}
    servers += [s for s in cfg.get("nameservers") or [] if s not in servers]
    searches += [s for s in cfg.get("searches") or [] if s not in searches]
    for opt in cfg.get("options") or []:
        options[opt["name"]] = opt.get("value")
    lines = ["# Kubernetes-managed resolv.conf (kubeloop node agent)."]
    lines += [f"nameserver {s}" for s in servers[:3]]  # glibc reads three
    if searches:
        lines.append("search " + " ".join(searches[:32]))
    if options:
        lines.append("options " + " ".join(k if v is None else f"{k}:{v}" for k, v in options.items()))
    return "\n".join(lines) + "\n"


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, records: Callable[[], Records]) -> None:
        self.records = records
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # asyncio's is not a subclass on 3.11

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            out = respond(data, self.records(), UDP_LIMIT)
        except Exception:  # one bad message must not stop the server
            log.exception("dns: answering %d bytes from %s failed", len(data), addr)
            return
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


class DnsServer:
    """UDP and TCP DNS on ``host``:``port``; ``records()`` gives the current records per message."""

    def __init__(self, host: str, port: int, records: Callable[[], Records]) -> None:
        self.host, self.port, self.records = host, port, records
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self.records), local_addr=(self.host, self.port)
        )
        self._tcp = await asyncio.start_server(self._stream, self.host, self.port)

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
                out = respond(await asyncio.wait_for(reader.readexactly(size), 10), self.records(), 0xFFFF)
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
