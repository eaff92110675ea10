"""The node agent's pure proxy logic (hack/nodeagent/network.py), without a cluster: which EndpointSlice
endpoints a Service port balances over (as kube-proxy picks them) and the logged rejections in the rules."""

from __future__ import annotations

from typing import Any

import pytest
from nodeagent import config, network

pytestmark = pytest.mark.harness


def _slice(
    *endpoints: tuple[str, dict[str, Any] | None], port: int = 8080, name: str = "http"
) -> dict[str, Any]:
    return {
        "ports": [{"name": name, "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [addr], **({"conditions": cond} if cond is not None else {})}
            for addr, cond in endpoints
        ],
    }


READY = {"ready": True, "serving": True, "terminating": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}
TERMINATING_NOT_SERVING = {"ready": False, "serving": False, "terminating": True}
STARTING = {"ready": False, "serving": False, "terminating": False}


def test_ready_endpoints_only_while_any_is_ready() -> None:
    slices = [
        _slice(("10.244.0.9", READY), ("10.244.0.3", TERMINATING), ("10.244.0.4", STARTING)),
        _slice(("10.244.0.5", None), ("10.244.0.9", READY)),  # no conditions: ready; a duplicate merged
    ]
    assert network.slice_endpoints(slices, "http", "tcp") == (("10.244.0.5", 8080), ("10.244.0.9", 8080))


def test_serving_terminating_endpoints_when_none_is_ready() -> None:
    """A rollout of a one-replica Deployment, or every pod deleted at once: the pods in their preStop
    still serve, so connections go to them rather than being refused (kube-proxy, KEP-1669)."""
    slices = [
        _slice(
            ("10.244.0.3", TERMINATING),
            ("10.244.0.4", STARTING),
            ("10.244.0.6", TERMINATING_NOT_SERVING),
            ("10.244.0.7", {"ready": False, "terminating": True}),  # serving unset: as ready (False)
        )
    ]
    assert network.slice_endpoints(slices, "http", "tcp") == (("10.244.0.3", 8080),)


def test_no_endpoint_when_none_is_ready_or_serving() -> None:
    slices = [_slice(("10.244.0.4", STARTING), ("10.244.0.6", TERMINATING_NOT_SERVING))]
    assert network.slice_endpoints(slices, "http", "tcp") == ()
    assert network.slice_endpoints([], "http", "tcp") == ()


def test_the_port_is_matched_by_name_and_protocol() -> None:
    slices = [
        _slice(("10.244.0.2", READY), port=9000, name="metrics"),
        _slice(("10.244.0.3", READY), port=8081, name="grpc"),
        _slice(("10.244.0.4", READY), port=8080, name="http"),
        {
            "ports": [{"name": "http", "port": 53, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.244.0.5"]}],
        },
        {"ports": [{"name": "http", "port": None}], "endpoints": [{"addresses": ["10.244.0.6"]}]},
    ]
    assert network.slice_endpoints(slices, "http", "tcp") == (("10.244.0.4", 8080),)
    assert network.slice_endpoints(slices, "http", "udp") == (("10.244.0.5", 53),)
    assert network.slice_endpoints(slices, "grpc", "tcp") == (("10.244.0.3", 8081),)


def _chain(ruleset: str, name: str) -> list[str]:
    body = ruleset.split(f"  chain {name} {{\n", 1)[1].split("\n  }", 1)[0]
    return [line.strip() for line in body.splitlines()]


def test_untranslated_service_traffic_is_refused_when_new_dropped_otherwise_and_logged_first() -> None:
    """As kube-proxy: a new connection to a Service port without endpoints is refused; any other packet
    that reached the service range untranslated (conntrack would not track it) is dropped, not answered
    with an ICMP error that would abort a socket with its addresses. Each is logged first."""
    cfg = config.load()
    svcs = str(cfg.service_cidr)
    ruleset = network.render_nft(
        cfg, [16443], [network.ServicePort("10.96.5.5", "tcp", 80, (), "ns/web:http")]
    )
    assert "10.96.5.5 . tcp . 80" not in ruleset  # no endpoints: not translated, so refused
    for chain, match, where in (
        ("filter_output", f"ip daddr {svcs}", "host->service"),
        ("filter_forward", f'iifname "{cfg.bridge}" ip daddr {svcs}', "pod->service"),
    ):
        rules = _chain(ruleset, chain)
        guard = [r for r in rules if r.startswith(match)]
        prefix = f'log prefix "{network.LOG_PREFIX} {where}'
        assert guard == [
            f'{match} ct state new limit rate 20/second burst 40 packets {prefix} reject ct=new: "',
            f"{match} ct state new reject",
            *(
                f'{match} ct state {st} limit rate 20/second burst 40 packets {prefix} drop ct={st}: "'
                for st in ("invalid", "untracked", "established,related")
            ),
            f"{match} drop",
        ], rules
        # nothing before the guard lets untranslated service traffic through
        assert not any(r.endswith(" accept") for r in rules[: rules.index(guard[0])]), rules
    rules = _chain(ruleset, "filter_input")
    reset = next(i for i, r in enumerate(rules) if f'"{network.LOG_PREFIX} reset from pod: "' in r)
    assert reset < rules.index(f'iifname "{cfg.bridge}" ct state established,related accept')
    assert "tcp flags & rst == rst ct status dnat limit rate" in rules[reset]


def test_system_services_are_synced_periodically_on_a_state_change_and_until_they_accept() -> None:
    from nodeagent import agent

    assert not agent.system_sync_due(True, False, 1.0)  # settled, nothing changed: wait
    assert agent.system_sync_due(True, False, agent.SYSTEM_RESYNC_S)  # the periodic look
    assert agent.system_sync_due(True, True, 1.0)  # cluster.json changed: a component started or stopped
    assert agent.system_sync_due(False, False, 1.0)  # one runs but does not accept connections yet


def test_a_host_service_is_ready_only_once_it_accepts_connections() -> None:
    import asyncio
    import socket

    from nodeagent import agent

    async def probe() -> tuple[bool, bool]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            before = await agent._accepts("127.0.0.1", port)  # bound, not listening: refused
            s.listen()
            return before, await agent._accepts("127.0.0.1", port)

    assert asyncio.run(probe()) == (False, True)
