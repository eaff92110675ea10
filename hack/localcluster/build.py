"""Build the control-plane binaries from their Go modules at pinned versions, cached by version.

A cached binary lives at ``<cache>/bin/<tool>-<version>``; when it exists nothing is built, so warm
runs cost nothing. Builds are serialised across processes with a lock file (pytest-xdist workers
and ``make`` may ask at the same time).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import versions
from .paths import HACK_DIR, cache_dir


class BuildError(RuntimeError):
    """A tool could not be built; the message names the tool and where its build log is."""


@dataclass(frozen=True)
class Tool:
    name: str
    version: str
    kind: str  # "wrapper": go build in hack/go/<module>; "install": go install <package>@<version>
    target: str  # wrapper module directory name, or the package path for "install"
    pinned_module: str  # the module whose version in the wrapper's go.mod must equal `version`
    packages: tuple[str, ...] = (".",)  # for "wrapper": what to build in that module
    ldflags: str = ""
    estimate: str = "a few minutes"


def _k8s_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=2026-01-01T00:00:00Z",
        ]
    return " ".join(flags)


_K8S_PACKAGES = ("k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager")


def _k8s_tool(name: str) -> Tool:
    # Both binaries come out of one `go build` of the wrapper module (same version, same flags).
    return Tool(
        name,
        versions.KUBERNETES,
        "wrapper",
        "kubernetes",
        "k8s.io/kubernetes",
        _K8S_PACKAGES,
        _k8s_ldflags(versions.KUBERNETES),
        "15-30 minutes on 2 cores",
    )


TOOLS: dict[str, Tool] = {
    "kube-apiserver": _k8s_tool("kube-apiserver"),
    "kube-controller-manager": _k8s_tool("kube-controller-manager"),
    "etcd": Tool(
        "etcd", versions.ETCD, "wrapper", "etcd", "go.etcd.io/etcd/server/v3", (".",), "", "2-5 minutes"
    ),
    "minio": Tool("minio", versions.MINIO, "install", "github.com/minio/minio", "", estimate="5-10 minutes"),
    "helm": Tool(
        "helm",
        versions.HELM,
        "install",
        "helm.sh/helm/v3/cmd/helm",
        "",
        ldflags=f"-X helm.sh/helm/v3/internal/version.version={versions.HELM}",
        estimate="3-6 minutes",
    ),
    "kind": Tool("kind", versions.KIND, "install", "sigs.k8s.io/kind", ""),
}

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager")


def binary_path(name: str) -> Path:
    tool = _tool(name)
    return cache_dir() / "bin" / f"{tool.name}-{tool.version}"


def _tool(name: str) -> Tool:
    try:
        return TOOLS[name]
    except KeyError:
        raise BuildError(f"unknown tool {name!r}; known: {', '.join(sorted(TOOLS))}") from None


def go_binary() -> str:
    """The ``go`` command: $GO, then PATH, then /usr/local/go/bin/go."""
    for candidate in (os.environ.get("GO"), shutil.which("go"), "/usr/local/go/bin/go"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BuildError("no Go toolchain found (set GO=/path/to/go or put go on PATH); Go >= 1.26 is needed")


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _log(msg: str) -> None:
    print(f"[kubeloop] {msg}", file=sys.stderr, flush=True)


def ensure(names: Sequence[str], *, quiet: bool = False) -> dict[str, Path]:
    """Return the cached binary of each tool, building the missing ones (serialised, with progress)."""
    tools = [_tool(n) for n in names]
    result = {t.name: binary_path(t.name) for t in tools}
    if not all(p.is_file() for p in result.values()):
        _build_missing(tools)
    if not quiet:
        for name, path in result.items():
            _log(f"{name}: {path}")
    return result


def _build_missing(tools: Sequence[Tool]) -> None:
    with _build_lock():
        for tool in tools:
            if binary_path(tool.name).is_file():
                continue  # built meanwhile by another process, or by a sibling of the same build
            _build(tool)
    missing = [t.name for t in tools if not binary_path(t.name).is_file()]
    if missing:
        raise BuildError(f"build finished but {missing} are missing from {cache_dir() / 'bin'}")


def _check_pin(tool: Tool, gomod: Path) -> None:
    """The binary is cached under versions.py's version: the wrapper's go.mod must build exactly that."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(tool.pinned_module)}\s+(\S+)", gomod.read_text(), re.M)
    if not match or match.group(1) != tool.version:
        found = match.group(1) if match else "nothing"
        raise BuildError(
            f"{gomod} pins {tool.pinned_module} at {found} but versions.py says {tool.version}; "
            f"update both (cd {gomod.parent} && go get {tool.pinned_module}@{tool.version})"
        )


def _build(tool: Tool) -> None:
    go = go_binary()
    bindir = cache_dir() / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    logdir = cache_dir() / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    logfile = logdir / f"build-{tool.name}-{tool.version}.log"
    ldflags = f"-s -w {tool.ldflags}".strip()
    env = dict(os.environ)
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -trimpath").strip()
    env.setdefault("CGO_ENABLED", "0")
    env.setdefault("GOMAXPROCS", str(os.cpu_count() or 2))
    env.pop("GOBIN", None)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".build-{tool.name}-") as tmp:
        if tool.kind == "wrapper":
            cwd = HACK_DIR / "go" / tool.target
            if not (cwd / "go.mod").is_file():
                raise BuildError(f"wrapper module {cwd} has no go.mod")
            _check_pin(tool, cwd / "go.mod")
            cmd = [go, "build", f"-ldflags={ldflags}", "-o", tmp + "/", *tool.packages]
            built = {Path(p).name if p != "." else tool.name: p for p in tool.packages}
        else:
            cwd = Path(tmp)
            env["GOBIN"] = tmp
            env["GO111MODULE"] = "on"
            cmd = [go, "install", f"-ldflags={ldflags}", f"{tool.target}@{tool.version}"]
            built = {tool.target.rsplit("/", 1)[-1]: tool.target}
        _log(
            f"building {', '.join(built)} {tool.version} with {go} (first time only, {tool.estimate}); log: {logfile}"
        )
        start = time.monotonic()
        with open(logfile, "w") as log:
            log.write(f"$ (cd {cwd} && {' '.join(cmd)})\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
            done = threading.Event()

            def ticker() -> None:
                while not done.wait(60):
                    _log(f"  still building {tool.name}... {int(time.monotonic() - start) // 60} min elapsed")

            threading.Thread(target=ticker, daemon=True).start()
            try:
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                done.set()
        if rc != 0:
            tail = "".join(logfile.read_text(errors="replace").splitlines(keepends=True)[-30:])
            raise BuildError(
                f"building {tool.name} {tool.version} failed (exit {rc}); log {logfile}:\n{tail}"
            )
        for produced in built:
            src = Path(tmp) / produced
            if not src.is_file():
                raise BuildError(f"building {tool.name} produced no {produced} in {tmp}")
            target_tool = TOOLS.get(produced, tool)
            os.replace(src, bindir / f"{target_tool.name}-{target_tool.version}")
        _log(f"built {', '.join(built)} {tool.version} in {time.monotonic() - start:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster.py build", description=__doc__)
    parser.add_argument(
        "tools", nargs="*", help=f"tools to build (default: all but kind): {', '.join(TOOLS)}"
    )
    args = parser.parse_args(argv)
    names = args.tools or [n for n in TOOLS if n != "kind"]
    try:
        ensure(names)
    except BuildError as exc:
        _log(f"error: {exc}")
        return 1
    return 0
