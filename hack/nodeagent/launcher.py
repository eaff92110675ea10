"""Container launcher: runs inside the pod's network, mount and UTS namespaces (stdlib only).

The agent starts ``ip netns exec <ns> unshare --mount --uts --propagation private -- python -I -S
launcher.py <spec.json>``. The launcher sets the hostname, bind-mounts the pod's volumes (and the
termination-message file, /etc/hosts and a private /tmp) at their paths, then forks the container's
command and stays as its parent, like a container runtime's shim: it ignores SIGTERM (the agent
signals the whole process group, so the command gets it), waits, writes ``exit.json`` (exit code,
signal, or why the command could not start), and finally kills whatever the command left behind in
its process group.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import os
import signal
import sys

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384

PR_CAPBSET_DROP = 24
# Linux capability numbers (include/uapi/linux/capability.h).
CAPABILITIES = {
    name: i
    for i, name in enumerate(
        [
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        ]
    )
}

_libc = ctypes.CDLL(None, use_errno=True)


def _limit_capabilities(keep: set[int]) -> None:
    """Drop every other capability from the bounding set: what the command gets at exec (as root)."""
    try:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())  # noqa: SIM115
    except OSError:
        last = max(CAPABILITIES.values())
    for cap in range(last + 1):
        if cap not in keep and _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"dropping capability {cap}: {os.strerror(err)}")


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_exit(dir_fd: int, name: str, record: dict[str, object]) -> None:
    # Through a directory fd opened before mounting: the state directory may be under a path (such as
    # /tmp) that the pod's own mounts hide.
    tmp = name + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _setup(spec: dict[str, object]) -> None:
    hostname = str(spec.get("hostname") or "")
    if hostname:
        with open("/proc/sys/kernel/hostname", "w") as fh:
            fh.write(hostname[:63])
    mounts = spec.get("mounts") or []
    assert isinstance(mounts, list)
    # Open every source first: a mount (e.g. the pod's /tmp) may hide where later sources live.
    opened = []
    for m in mounts:
        src = str(m["source"])
        opened.append(
            (os.open(src, os.O_PATH), os.path.isdir(src), str(m["target"]), bool(m.get("readOnly")))
        )
    for fd, is_dir, dst, read_only in opened:
        if is_dir:
            os.makedirs(dst, exist_ok=True)
        elif not os.path.exists(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "a").close()
        src = f"/proc/self/fd/{fd}"
        _mount(src, dst, MS_BIND | MS_REC)
        if read_only:
            _mount(dst, dst, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
        os.close(fd)


def main() -> int:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    exit_file = str(spec["exitFile"])
    exit_dir = os.open(os.path.dirname(exit_file), os.O_RDONLY | os.O_DIRECTORY)
    exit_name = os.path.basename(exit_file)
    argv = [str(a) for a in spec["argv"]]
    env = {str(k): str(v) for k, v in spec["env"].items()}
    try:
        _setup(spec)
    except OSError as exc:
        _write_exit(
            exit_dir,
            exit_name,
            {
                "exitCode": 128,
                "reason": "StartError",
                "message": f"mounting volumes: {exc}",
                "finishedAt": _now(),
            },
        )
        return 128

    err_r, err_w = os.pipe()
    os.set_inheritable(err_w, False)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(err_r)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_DFL)
            cwd = str(spec.get("workingDir") or "/")
            os.chdir(cwd)
            caps = spec.get("capabilities")
            if caps is not None:
                _limit_capabilities({CAPABILITIES[str(c)] for c in caps if str(c) in CAPABILITIES})
            gid, uid = spec.get("runAsGroup"), spec.get("runAsUser")
            if gid is not None:
                os.setgroups([int(str(gid))])
                os.setgid(int(str(gid)))
            if uid is not None:
                os.setuid(int(str(uid)))
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:  # any failure before exec is a start error
            msg = f"failed to create containerd task: exec: {argv[0]!r}: {exc.strerror if isinstance(exc, OSError) else exc}"
            os.write(err_w, msg.encode()[:4000])
        os._exit(128)
    os.close(err_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    start_error = b""
    while True:
        chunk = os.read(err_r, 4096)
        if not chunk:
            break
        start_error += chunk
    os.close(err_r)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 0
            break
        except InterruptedError:
            continue
    record: dict[str, object] = {"finishedAt": _now()}
    if start_error:
        record.update(
            {"exitCode": 128, "reason": "StartError", "message": start_error.decode(errors="replace")}
        )
    elif os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        record.update({"exitCode": 128 + signum, "signal": signum})
    else:
        record["exitCode"] = os.waitstatus_to_exitcode(status)
    _write_exit(exit_dir, exit_name, record)
    # Like a container's cgroup: nothing the command started may outlive it.
    if os.getpgrp() == os.getpid():  # only when started as a group leader, as the agent does
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.killpg(os.getpgrp(), signal.SIGKILL)
    return int(str(record["exitCode"]))


if __name__ == "__main__":
    sys.exit(main())
