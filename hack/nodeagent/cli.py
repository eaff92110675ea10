"""``python -m nodeagent up|run|down|status|leftovers`` (run from hack/, or via ``make``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import config, network
from .agent import Agent, agent_dir, cluster_root

HACK = Path(__file__).resolve().parent.parent
PREREQS = {"ip": "iproute2", "nft": "nftables", "unshare": "util-linux", "nsenter": "util-linux"}


def _say(msg: str) -> None:
    print(f"[nodeagent] {msg}", file=sys.stderr, flush=True)


def ensure_prerequisites() -> None:
    """The agent needs root and iproute2, nftables and util-linux; installs missing packages with apt."""
    if os.geteuid() != 0:
        raise SystemExit("the node agent needs root (network namespaces, bridges, nftables)")
    missing = sorted({pkg for tool, pkg in PREREQS.items() if shutil.which(tool) is None})
    if missing and shutil.which("apt-get"):
        _say(f"installing {', '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", *missing],
            env=env,
            check=False,
            capture_output=True,
        )
        if any(shutil.which(t) is None for t in PREREQS):
            subprocess.run(["apt-get", "update"], env=env, check=False, capture_output=True)
            subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", *missing],
                env=env,
                check=False,
                capture_output=True,
            )
    still = sorted(t for t in PREREQS if shutil.which(t) is None)
    if still:
        raise SystemExit(
            f"missing tools: {', '.join(still)} (install {', '.join(sorted({PREREQS[t] for t in still}))})"
        )


def bridge_lock_path(cfg: config.Config) -> Path:
    return Path("/run/lock") / f"kubeloop-nodeagent-{cfg.bridge}.lock"


def hold_bridge_lock(cfg: config.Config) -> Any:
    """One agent per bridge on a machine: a second one (another state dir) would fight over the rules."""
    path = bridge_lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held for the agent's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise SystemExit(f"another node agent already manages bridge {cfg.bridge}: {holder}") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}, state {agent_dir()}\n")
    fh.flush()
    return fh


def _pidfile() -> Path:
    return agent_dir() / "agent.pid"


def _proc_ticks(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


def running_pid() -> int | None:
    try:
        rec = json.loads(_pidfile().read_text())
    except (OSError, ValueError):
        return None
    pid = int(rec["pid"])
    return pid if _proc_ticks(pid) == int(rec["ticks"]) else None


def info() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((agent_dir() / "agent.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def log_file() -> Path:
    """``<state>/logs/nodeagent.log``, or ``agent.log`` in KUBELOOP_NODEAGENT_STATE when that is set."""
    if os.environ.get("KUBELOOP_NODEAGENT_STATE"):
        return agent_dir() / "agent.log"
    return cluster_root() / "logs" / "nodeagent.log"


def cmd_run(args: argparse.Namespace) -> int:
    ensure_prerequisites()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    cfg = config.load()
    lock = hold_bridge_lock(cfg)
    try:
        asyncio.run(Agent(cfg).run())
    finally:
        lock.close()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    if os.environ.get("KUBELOOP_NODEAGENT", "").lower() in ("0", "off", "false", "no"):
        _say("KUBELOOP_NODEAGENT is off: not starting the node agent")
        return 0
    ensure_prerequisites()
    pid = running_pid()
    if pid is not None:
        _say(f"already running (pid {pid})")
        return 0
    hold_bridge_lock(config.load()).close()  # fails at once if another agent has the bridge
    root = cluster_root()
    try:
        comps = json.loads((root / "cluster.json").read_text()).get("components", {})
    except (OSError, ValueError):
        comps = {}
    if "kube-apiserver" not in comps:
        raise SystemExit(f"the local control plane ({root}) is not running: run `make cluster-up` first")
    d = agent_dir()
    d.mkdir(parents=True, exist_ok=True)
    logfile = log_file()
    logfile.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with contextlib.suppress(FileNotFoundError):
        (d / "agent.json").unlink()
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "run", *(["-v"] if args.verbose else [])],
            cwd=HACK,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    proc.returncode = 0
    _pidfile().write_text(json.dumps({"pid": proc.pid, "ticks": _proc_ticks(proc.pid)}))
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if _proc_ticks(proc.pid) is None:
            tail = logfile.read_text(errors="replace").splitlines()[-25:]
            raise SystemExit(
                "node agent exited during start-up; see " + str(logfile) + ":\n" + "\n".join(tail)
            )
        if info().get("ready"):
            i = info()
            _say(
                f"node {i['node']} ready in {time.monotonic() - t0:.1f} s (pid {proc.pid}); pods on {i['podCIDR']} "
                f"via {i['bridge']}, Services {i['serviceCIDR']}; log {logfile}"
            )
            return 0
        time.sleep(0.2)
    raise SystemExit(f"node agent not ready after {args.timeout:.0f} s; see {logfile}")


def stop_agent(timeout: float = 15.0) -> int | None:
    pid = running_pid()
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _proc_ticks(pid) is not None:
        time.sleep(0.1)
    if _proc_ticks(pid) is not None:
        os.kill(pid, signal.SIGKILL)
        while _proc_ticks(pid) is not None:
            time.sleep(0.05)
    return pid


def remove_created_paths() -> list[str]:
    record = agent_dir() / "created-paths.json"
    removed: list[str] = []
    if not record.is_file():
        return removed
    for p in sorted(json.loads(record.read_text()), key=len, reverse=True):
        path = Path(p)
        try:
            if path.is_dir() and not path.is_symlink():
                # Only directories the agent made as mount points, and only while empty.
                for sub in sorted(path.rglob("*"), key=lambda x: len(str(x)), reverse=True):
                    if sub.is_dir():
                        sub.rmdir()
                    elif sub.stat().st_size == 0:
                        sub.unlink()
                path.rmdir()
            elif path.exists() and path.stat().st_size == 0:
                path.unlink()
            removed.append(p)
        except OSError as exc:
            _say(f"left {p} in place: {exc}")
    record.unlink()
    return removed


def cmd_down(args: argparse.Namespace) -> int:
    cfg = config.load()
    pid = stop_agent()
    if pid:
        _say(f"agent stopped (pid {pid})")
    d = agent_dir()
    try:
        lock = hold_bridge_lock(cfg)
    except SystemExit as exc:
        # Another agent (another state directory) runs on this bridge: its pods and rules are not ours.
        _say(f"{exc}; leaving its pods and network alone")
        return 0
    try:
        removed = [f"process group {p}" for p in kill_launchers()]
        removed += network.host_down(cfg, d / "host-network.json")
        bridge_lock_path(cfg).unlink(missing_ok=True)
    finally:
        lock.close()
    removed += [f"mount point {p}" for p in remove_created_paths()]
    shutil.rmtree(d / "pods", ignore_errors=True)
    for f in ("agent.json", "agent.pid"):
        with contextlib.suppress(FileNotFoundError):
            (d / f).unlink()
    for r in removed:
        _say(f"removed {r}")
    left = leftovers(cfg)
    if left:
        _say("left behind: " + "; ".join(left))
        return 1
    _say("node agent down: no process, namespace, interface, route or rule left")
    return 0


def launcher_pids() -> list[int]:
    """Container launchers of this agent's pods (found by command line, wherever they run)."""
    launcher = str(Path(__file__).resolve().parent / "launcher.py")
    pods_dir = str(agent_dir() / "pods")
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (
                Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        if launcher in cmdline and pods_dir in cmdline:
            pids.append(int(entry.name))
    return pids


def kill_launchers() -> list[int]:
    """SIGKILL each launcher's process group (the container and what it started), e.g. after a crash."""
    killed = []
    for pid in launcher_pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_proc_ticks(p) is not None for p in killed):
        time.sleep(0.05)
    return killed


def leftovers(cfg: config.Config | None = None) -> list[str]:
    """Everything of the agent that still exists (empty after a clean ``down``)."""
    cfg = cfg or config.load()
    out: list[str] = []
    pid = running_pid()
    if pid:
        out.append(f"agent process {pid}")
    out += [f"netns {n}" for n in network.list_netns(cfg)]
    out += [f"link {n}" for n in network.list_links(f"{cfg.prefix}v")]
    if network.link_exists(cfg.bridge):
        out.append(f"bridge {cfg.bridge}")
    out += [f"route {r}" for r in network.our_routes(cfg)]
    if (
        subprocess.run(
            ["nft", "list", "table", "ip", cfg.nft_table], capture_output=True, check=False
        ).returncode
        == 0
    ):
        out.append(f"nft table ip {cfg.nft_table}")
    out += [f"container launcher process {p}" for p in launcher_pids()]
    return out


def cmd_status(args: argparse.Namespace) -> int:
    pid = running_pid()
    i = info()
    if args.json:
        print(json.dumps({"running": pid is not None, "pid": pid, **i}, indent=2))
    elif pid is None:
        print("node agent: not running")
    else:
        print(
            f"node agent: running (pid {pid}), node {i.get('node')} {'ready' if i.get('ready') else 'starting'}"
        )
        for k in ("bridge", "bridgeIP", "podCIDR", "serviceCIDR", "kubeletPort"):
            print(f"  {k}: {i.get(k)}")
        for name, s in (i.get("systemServices") or {}).items():
            print(f"  service {s['namespace']}/{name}: {s['clusterIP']}:{s['port']}")
    return 0 if pid is not None else 3


def cmd_leftovers(args: argparse.Namespace) -> int:
    left = leftovers()
    for item in left:
        print(item)
    return 1 if left else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodeagent", description="Kubeloop local node agent")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run in the foreground")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("up", help="start in the background and wait until the node is ready")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--timeout", type=float, default=90.0)
    p.set_defaults(fn=cmd_up)
    p = sub.add_parser(
        "down", help="stop the agent and remove every pod process, netns, interface, route and rule"
    )
    p.set_defaults(fn=cmd_down)
    p = sub.add_parser("status", help="show whether the agent runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("leftovers", help="list anything of the agent that still exists; exit 1 if any")
    p.set_defaults(fn=cmd_leftovers)
    args = parser.parse_args(argv)
    rc: int = args.fn(args)
    return rc
