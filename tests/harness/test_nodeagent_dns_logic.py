"""The node agent's cluster DNS (hack/nodeagent/dns.py) without a cluster: the records it derives from
Services and EndpointSlices, its DNS messages, the resolv.conf a pod gets, and one server on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from typing import Any

import pytest
from nodeagent import config, dns, network

pytestmark = pytest.mark.harness

PODS = ipaddress.IPv4Network("10.244.0.0/24")
SERVICES = ipaddress.IPv4Network("10.96.0.0/16")
AAAA, TXT = 28, 16


def service(name: str, ns: str = "team", cluster_ip: str | None = "10.96.7.7", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": cluster_ip if cluster_ip is not None else "None", **spec},
    }


def endpoint_slice(svc: str, *endpoints: dict[str, Any], ns: str = "team") -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": list(endpoints),
    }


def ep(ip: str, ready: bool | None = True, hostname: str | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"addresses": [ip]}
    if ready is not None:
        e["conditions"] = {"ready": ready}
    if hostname:
        e["hostname"] = hostname
    return e


@pytest.fixture
def records() -> dns.Records:
    return dns.Records.build(
        [
            service("web"),
            service("peers", cluster_ip=None),
            service("early", cluster_ip=None, publishNotReadyAddresses=True),
            service("out", type="ExternalName", externalName="example.com", cluster_ip=None),
        ],
        [
            endpoint_slice("web", ep("10.244.0.9")),  # not headless: its endpoints get no records
            endpoint_slice(
                "peers", ep("10.244.0.5", hostname="rank-0"), ep("10.244.0.4"), ep("10.244.0.6", False)
            ),
            endpoint_slice("peers", ep("10.244.0.3", None)),  # no conditions: ready
            endpoint_slice("early", ep("10.244.0.8", False, hostname="warming")),
            endpoint_slice("gone", ep("10.244.0.7")),  # its Service is not (yet) known
        ],
        PODS,
        SERVICES,
    )


def a(*ips: str) -> tuple[int, list[tuple[int, bytes]]]:
    return dns.NOERROR, [(dns.TYPE_A, socket.inet_aton(ip)) for ip in ips]


def ptr(name: str) -> tuple[int, list[tuple[int, bytes]]]:
    return dns.NOERROR, [(dns.TYPE_PTR, dns.encode_name(name))]


def test_a_service_resolves_to_its_cluster_ip_and_back(records: dns.Records) -> None:
    assert records.answer("web.team.svc.cluster.local", dns.TYPE_A) == a("10.96.7.7")
    assert records.answer("7.7.96.10.in-addr.arpa", dns.TYPE_PTR) == ptr("web.team.svc.cluster.local")
    # The name exists without an IPv6 address: NODATA, so a resolver does not try its search list on.
    assert records.answer("web.team.svc.cluster.local", AAAA) == (dns.NOERROR, [])
    assert records.answer("web.team.svc.cluster.local", TXT) == (dns.NOERROR, [])
    assert records.answer("10-244-0-9.web.team.svc.cluster.local", dns.TYPE_A)[0] == dns.NXDOMAIN


def test_a_headless_service_resolves_to_its_ready_endpoints_each_with_its_own_name(
    records: dns.Records,
) -> None:
    assert records.answer("peers.team.svc.cluster.local", dns.TYPE_A) == a(
        "10.244.0.3", "10.244.0.4", "10.244.0.5"
    )
    assert records.answer("rank-0.peers.team.svc.cluster.local", dns.TYPE_A) == a("10.244.0.5")
    assert records.answer("10-244-0-4.peers.team.svc.cluster.local", dns.TYPE_A) == a("10.244.0.4")
    assert records.answer("5.0.244.10.in-addr.arpa", dns.TYPE_PTR) == ptr(
        "rank-0.peers.team.svc.cluster.local"
    )
    assert records.answer("4.0.244.10.in-addr.arpa", dns.TYPE_PTR) == ptr(
        "10-244-0-4.peers.team.svc.cluster.local"
    )
    # not ready: no record (the Service does not publish not-ready addresses)
    assert records.answer("10-244-0-6.peers.team.svc.cluster.local", dns.TYPE_A)[0] == dns.NXDOMAIN
    assert records.answer("6.0.244.10.in-addr.arpa", dns.TYPE_PTR)[0] == dns.NXDOMAIN
    # publishNotReadyAddresses: a pod is found before it is ready, as StatefulSet peers need
    assert records.answer("warming.early.team.svc.cluster.local", dns.TYPE_A) == a("10.244.0.8")


def test_a_headless_service_without_endpoints_exists_with_no_address() -> None:
    r = dns.Records.build([service("peers", cluster_ip=None)], [], PODS, SERVICES)
    assert r.answer("peers.team.svc.cluster.local", dns.TYPE_A) == (dns.NOERROR, [])


def test_pod_names_resolve_for_addresses_in_the_pod_range_only(records: dns.Records) -> None:
    assert records.answer("10-244-0-42.any.pod.cluster.local", dns.TYPE_A) == a("10.244.0.42")
    for name in (
        "10-1-0-42.any.pod.cluster.local",
        "10-244-0.any.pod.cluster.local",
        "x.any.pod.cluster.local",
    ):
        assert records.answer(name, dns.TYPE_A)[0] == dns.NXDOMAIN, name


def test_unknown_cluster_names_are_nxdomain_and_names_elsewhere_are_refused(records: dns.Records) -> None:
    for name in (
        "missing.team.svc.cluster.local",
        "web.other.svc.cluster.local",
        "web.team.svc.cluster.local.team.svc.cluster.local",  # a search-list candidate
        "out.team.svc.cluster.local",  # ExternalName is not served
        "cluster.local",
    ):
        assert records.answer(name, dns.TYPE_A)[0] == dns.NXDOMAIN, name
    # A pod or service address nobody holds: NXDOMAIN; addresses outside the cluster's ranges are not ours.
    assert records.answer("250.0.244.10.in-addr.arpa", dns.TYPE_PTR)[0] == dns.NXDOMAIN
    assert records.answer("9.9.96.10.in-addr.arpa", dns.TYPE_PTR)[0] == dns.NXDOMAIN
    for name in (
        "example.com",
        "localhost",
        "1.2.0.192.in-addr.arpa",
        "x.in-addr.arpa",
        "team.svc.cluster.localx",
    ):
        assert records.answer(name, dns.TYPE_A)[0] == dns.REFUSED, name


def query(
    name: str, qtype: int = dns.TYPE_A, qid: int = 0x1234, flags: int = 0x0100, qdcount: int = 1
) -> bytes:
    return (
        struct.pack("!HHHHHH", qid, flags, qdcount, 0, 0, 0)
        + dns.encode_name(name)
        + struct.pack("!HH", qtype, 1)
    )


def parse_reply(msg: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """(id, flags, [(type, rdata)]) of an answer; checks the question is echoed."""
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", msg)
    assert (qd, ns, ar) == (1, 0, 0)
    pos = 12
    while msg[pos]:
        pos += msg[pos] + 1
    pos += 5
    out = []
    for _ in range(an):
        assert msg[pos : pos + 2] == b"\xc0\x0c"  # the question's name
        rtype, rclass, ttl, size = struct.unpack_from("!HHIH", msg, pos + 2)
        assert (rclass, ttl) == (1, dns.TTL)
        out.append((rtype, msg[pos + 12 : pos + 12 + size]))
        pos += 12 + size
    assert pos == len(msg)
    return qid, flags, out


def test_a_query_is_answered_with_its_id_question_and_flags(records: dns.Records) -> None:
    msg = dns.respond(query("WEB.team.svc.cluster.local."), records, dns.UDP_LIMIT)
    assert msg is not None
    qid, flags, answers = parse_reply(msg)
    assert qid == 0x1234
    assert flags == 0x8000 | 0x0400 | 0x0100 | 0x0080  # response, authoritative, RD echoed, RA
    assert answers == [(dns.TYPE_A, socket.inet_aton("10.96.7.7"))]
    assert msg[12:40] == query("WEB.team.svc.cluster.local")[12:40]  # the question as asked, case kept
    _, flags, answers = parse_reply(dns.respond(query("nope.cluster.local", flags=0), records, 512) or b"")
    assert (flags & 0xF, flags & 0x0100, answers) == (dns.NXDOMAIN, 0, [])
    _, flags, _ = parse_reply(dns.respond(query("example.com"), records, 512) or b"")
    assert (flags & 0xF, flags & 0x0400) == (dns.REFUSED, 0)


def test_an_answer_too_big_for_udp_is_truncated_and_complete_over_tcp() -> None:
    eps = [ep(f"10.244.0.{i}") for i in range(10, 60)]
    r = dns.Records.build([service("big", cluster_ip=None)], [endpoint_slice("big", *eps)], PODS, SERVICES)
    q = query("big.team.svc.cluster.local")
    _, flags, answers = parse_reply(dns.respond(q, r, dns.UDP_LIMIT) or b"")
    assert flags & 0x0200
    assert answers == []
    _, flags, answers = parse_reply(dns.respond(q, r, 0xFFFF) or b"")
    assert not flags & 0x0200
    assert len(answers) == 50


@pytest.mark.parametrize(
    ("message", "rcode"),
    [
        (query("a.cluster.local", qdcount=2), dns.FORMERR),
        (query("a.cluster.local", qdcount=0), dns.FORMERR),
        (query("a.cluster.local", flags=0x1000), dns.NOTIMP),  # opcode 2 (status)
        (query("a.cluster.local")[:-3], dns.FORMERR),  # type and class cut off
        (query("a.cluster.local")[:15], dns.FORMERR),  # a label past the end
        (query("a.cluster.local")[:12] + b"\xc0\x0c" + b"\0\1\0\1", dns.FORMERR),  # compression
        (query("a.cluster.local")[:12] + b"\x05ab", dns.FORMERR),
    ],
)
def test_malformed_queries_get_an_error_with_their_id(
    records: dns.Records, message: bytes, rcode: int
) -> None:
    out = dns.respond(message, records, dns.UDP_LIMIT)
    assert out is not None
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", out)
    assert (qid, flags & 0x8000, flags & 0xF, qd, an, ns, ar) == (0x1234, 0x8000, rcode, 0, 0, 0, 0)


@pytest.mark.parametrize("message", [b"", b"\x12\x34\x01", query("a.cluster.local", flags=0x8000)])
def test_runts_and_responses_get_no_answer(records: dns.Records, message: bytes) -> None:
    assert dns.respond(message, records, dns.UDP_LIMIT) is None


def pod(ns: str = "team", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": "p"}, "spec": spec}


def test_a_pod_gets_the_kubelets_resolv_conf_for_its_dns_policy() -> None:
    cluster_first = (
        "# Kubernetes-managed resolv.conf (kubeloop node agent).\n"
        "nameserver 10.244.0.1\n"
        "search team.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5\n"
    )
    assert dns.resolv_conf(pod(), "10.244.0.1") == cluster_first
    assert dns.resolv_conf(pod(dnsPolicy="ClusterFirst"), "10.244.0.1") == cluster_first
    assert dns.resolv_conf(pod(dnsPolicy="Default"), "10.244.0.1") is None  # the node's own file
    merged = dns.resolv_conf(
        pod(
            dnsConfig={
                "nameservers": ["10.244.0.1", "10.244.0.2"],
                "searches": ["corp.internal"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
            }
        ),
        "10.244.0.1",
    )
    assert merged is not None
    assert merged.splitlines()[1:] == [
        "nameserver 10.244.0.1",
        "nameserver 10.244.0.2",
        "search team.svc.cluster.local svc.cluster.local cluster.local corp.internal",
        "options ndots:2 edns0",
    ]
    only = dns.resolv_conf(pod(dnsPolicy="None", dnsConfig={"nameservers": ["10.244.0.2"]}), "10.244.0.1")
    assert only is not None
    assert only.splitlines()[1:] == ["nameserver 10.244.0.2"]


def test_pods_may_reach_the_cluster_dns_on_the_bridge_before_the_rejects() -> None:
    cfg = config.load()
    body = network.render_nft(cfg, [], []).split("  chain filter_input {\n", 1)[1].split("\n  }", 1)[0]
    rules = [line.strip() for line in body.splitlines()]
    accept = f'iifname "{cfg.bridge}" ip daddr {cfg.bridge_ip} meta l4proto {{ tcp, udp }} th dport 53 accept'
    assert accept in rules
    assert rules.index(accept) < min(i for i, r in enumerate(rules) if " reject" in r), rules


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", port))  # free for UDP too
    return port


def test_the_server_answers_over_udp_and_tcp_and_sees_new_records(records: dns.Records) -> None:
    current = [records]

    async def scenario() -> tuple[bytes, bytes, bytes]:
        port = _free_port()
        server = dns.DnsServer("127.0.0.1", port, lambda: current[0])
        await server.start()
        loop = asyncio.get_running_loop()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.setblocking(False)
                await loop.sock_connect(u, ("127.0.0.1", port))
                await loop.sock_sendall(u, b"\x01")  # a runt: ignored, the server carries on
                await loop.sock_sendall(u, query("web.team.svc.cluster.local"))
                over_udp = await asyncio.wait_for(loop.sock_recv(u, 4096), 5)
                current[0] = dns.Records.build([service("web", cluster_ip="10.96.8.8")], [], PODS, SERVICES)
                await loop.sock_sendall(u, query("web.team.svc.cluster.local"))
                changed = await asyncio.wait_for(loop.sock_recv(u, 4096), 5)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            q = query("web.team.svc.cluster.local", qid=7)
            writer.write(struct.pack("!H", len(q)) + q)
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))[0]
            over_tcp = await asyncio.wait_for(reader.readexactly(size), 5)
            writer.close()
            return over_udp, changed, over_tcp
        finally:
            await server.close()

    over_udp, changed, over_tcp = asyncio.run(scenario())
    assert parse_reply(over_udp)[2] == [(dns.TYPE_A, socket.inet_aton("10.96.7.7"))]
    assert parse_reply(changed)[2] == [(dns.TYPE_A, socket.inet_aton("10.96.8.8"))]
    assert parse_reply(over_tcp)[0] == 7
    assert parse_reply(over_tcp)[2] == [(dns.TYPE_A, socket.inet_aton("10.96.8.8"))]
