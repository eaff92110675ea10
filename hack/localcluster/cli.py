"""Command line: ``hack/cluster.py up|down|status|env|build|kind-up``."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Sequence

from . import build
from .cluster import ALL_GROUPS, GROUPS, ClusterError, LocalCluster, env_exports, log, usage_text


def _cmd_up(args: argparse.Namespace) -> int:
    cluster = LocalCluster()
    t0 = time.monotonic()
    data = cluster.up(args.components or ALL_GROUPS, managed_by="make", timeout=args.timeout)
    log(f"cluster-up done in {time.monotonic() - t0:.1f} s (state: {cluster.state_file})")
    print(usage_text(data))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cluster = LocalCluster()
    groups = args.components or list(ALL_GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ClusterError(f"unknown group(s) {unknown}; known: {', '.join(GROUPS)}")
    leftovers = cluster.down(groups)
    if leftovers:
        log(f"error: processes still running after cluster-down: {leftovers}")
        return 1
    log("cluster-down: no process left behind")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster()
    st = cluster.status()
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(f"{'COMPONENT':<25}{'STATE':<10}{'PID':<9}{'ADDRESS':<18}{'STARTED BY':<11}DETAIL")
        for name, s in st.items():
            state = "healthy" if s["healthy"] else "unhealthy" if s["running"] else "stopped"
            print(
                f"{name:<25}{state:<10}{s['pid'] or '-'!s:<9}{s['address'] or '-':<18}{s['managed_by'] or '-':<11}{s['detail']}"
            )
        if any(s["running"] for s in st.values()):
            print()
            print(usage_text(cluster.load()))
    running = [s for s in st.values() if s["running"]]
    return 0 if running and all(s["healthy"] for s in running) else 1


def _cmd_env(args: argparse.Namespace) -> int:
    env = env_exports(LocalCluster().load())
    if not env:
        log("nothing is running; start it with `make cluster-up`")
        return 1
    for k, v in env.items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    return build.main(args.tools)


def _cmd_kind_up(args: argparse.Namespace) -> int:
    from .kind import kind_up

    return kind_up(name=args.name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/cluster.py", description="Local Kubeloop cluster without Docker."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="start components (default: all) and print how to use them")
    p.add_argument("components", nargs="*", help=f"groups or components: {', '.join(GROUPS)}")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds each component may take to become healthy"
    )
    p.set_defaults(fn=_cmd_up)
    p = sub.add_parser("down", help="stop components (default: all); fails if any process is left")
    p.add_argument("components", nargs="*", help=f"groups: {', '.join(GROUPS)}")
    p.set_defaults(fn=_cmd_down)
    p = sub.add_parser("status", help="show each component; exit 1 unless everything running is healthy")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd_status)
    p = sub.add_parser("env", help='print shell exports (eval "$(hack/cluster.py env)")')
    p.set_defaults(fn=_cmd_env)
    p = sub.add_parser("build", help="build and cache the pinned binaries")
    p.add_argument("tools", nargs="*")
    p.set_defaults(fn=_cmd_build)
    p = sub.add_parser(
        "kind-up", help="create a kind cluster (needs Docker) and print KUBELOOP_TEST_KUBECONFIG"
    )
    p.add_argument("--name", default="kubeloop")
    p.set_defaults(fn=_cmd_kind_up)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ClusterError, build.BuildError) as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; run `make cluster-down` to stop anything already started")
        return 130
