"""Process bookkeeping without a supervisor: start in a new session, identify by pid + start time,
stop by process group, and find anything left over by scanning /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    start_time: int  # clock ticks since boot (/proc/<pid>/stat field 22): guards against pid reuse


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; it ends at the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(info: ProcInfo) -> bool:
    fields = _stat_fields(info.pid)
    if fields is None or fields[0] == "Z":
        return False
    return int(fields[19]) == info.start_time


def spawn(cmd: Sequence[str], *, log: Path, env: Mapping[str, str], cwd: Path) -> ProcInfo:
    """Start ``cmd`` in its own session (so its whole process group can be signalled), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    st = start_time(proc.pid)
    # Popen objects for detached services are dropped on purpose; keep the child from becoming a zombie
    # while this process lives by not holding a reference the GC would wait on.
    proc.returncode = 0
    return ProcInfo(proc.pid, st if st is not None else -1)


def session_members(sid: int) -> list[int]:
    """Pids of every live process in session ``sid`` (our services are session leaders)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def processes_mentioning(needle: str) -> list[int]:
    """Pids (other than this process and its ancestors) whose command line contains ``needle``."""
    exclude = {os.getpid()}
    pid = os.getppid()
    while pid > 1 and pid not in exclude:
        exclude.add(pid)
        fields = _stat_fields(pid)
        pid = int(fields[1]) if fields else 1
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            cmdline = (
                Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = _stat_fields(int(entry.name))
        if needle in cmdline and fields and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _signal_group(sid: int, sig: signal.Signals) -> None:
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(info: ProcInfo, *, grace: float = 15.0) -> None:
    """SIGTERM the service's whole session, SIGKILL whatever is left after ``grace`` seconds."""
    if not is_alive(info):
        _reap(info.pid)
        # Children of a dead leader may still hold the session.
        _signal_group(info.pid, signal.SIGKILL)
        return
    _signal_group(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(info.pid)
        if not session_members(info.pid):
            return
        time.sleep(0.1)
    _signal_group(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _reap(info.pid)
        if not session_members(info.pid):
            return
        time.sleep(0.1)


def kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        _reap(pid)
