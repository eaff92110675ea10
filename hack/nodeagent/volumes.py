"""Pod volumes materialised under the pod's directory, then bind-mounted by the launcher.

ConfigMap, Secret, projected (ServiceAccount token via the TokenRequest API, configMap, secret,
downwardAPI) and downwardAPI volumes are written the way the kubelet's atomic writer does it:
``..data`` points at a timestamped directory and the visible names are symlinks through it, so an
update (token rotation, changed ConfigMap) is seen inside the pod at once and never half-written.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kubeapi import Api, ApiError
from .podutil import field_value, resource_value

Obj = dict[str, Any]


class VolumeError(Exception):
    """A volume cannot be set up yet (missing object, forbidden): the pod waits, with this message."""


def atomic_write(target: Path, files: dict[str, tuple[bytes, int]]) -> bool:
    """Make ``target`` hold exactly ``files`` (relative path -> content, mode); False if unchanged."""
    target.mkdir(parents=True, exist_ok=True)
    data_link = target / "..data"
    if data_link.is_symlink():
        current = target / os.readlink(data_link)
        same = True
        existing = {str(p.relative_to(current)) for p in current.rglob("*") if p.is_file()}
        if existing != set(files):
            same = False
        else:
            for rel, (content, mode) in files.items():
                p = current / rel
                if p.read_bytes() != content or (p.stat().st_mode & 0o777) != mode:
                    same = False
                    break
        if same:
            return False
    ts = target / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns() % 10**9}"
    ts.mkdir()
    for rel, (content, mode) in files.items():
        p = ts / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        p.chmod(mode)
    tmp = target / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(ts.name)
    os.replace(tmp, data_link)
    tops = {rel.split("/", 1)[0] for rel in files}
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            if entry.is_dir() and not entry.is_symlink() and entry.name != ts.name:
                shutil.rmtree(entry, ignore_errors=True)
            continue
        if entry.is_symlink() and entry.name not in tops:
            entry.unlink()
    for top in tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    return True


@dataclass
class TokenState:
    token: str = ""
    expires: float = 0.0
    issued: float = 0.0


@dataclass
class PodVolumes:
    """Materialises and refreshes one pod's volumes; ``paths`` maps volume name -> host path."""

    api: Api
    pod_dir: Path
    node_allocatable: dict[str, str]
    node_name: str
    paths: dict[str, Path] = field(default_factory=dict)
    tokens: dict[str, TokenState] = field(default_factory=dict)

    async def _get(self, kind: str, ns: str, name: str, optional: bool) -> Obj | None:
        plural = {"ConfigMap": "configmaps", "Secret": "secrets"}[kind]
        try:
            return await self.api.get(f"/api/v1/namespaces/{ns}/{plural}/{name}")
        except ApiError as exc:
            if exc.status == 404 and optional:
                return None
            if exc.status == 404:
                raise VolumeError(f'{kind.lower()} "{name}" not found') from exc
            raise VolumeError(f"{kind.lower()} {name!r}: {exc.message}") from exc

    @staticmethod
    def _items(
        data: dict[str, bytes], items: list[Obj] | None, mode: int, optional: bool, what: str
    ) -> dict[str, tuple[bytes, int]]:
        if not items:
            return {k: (v, mode) for k, v in data.items()}
        out = {}
        for item in items:
            key = item["key"]
            if key not in data:
                if optional:
                    continue
                raise VolumeError(
                    f"configmap references non-existent config key: {key}"
                    if what == "configmap"
                    else f"secret references non-existent secret key: {key}"
                )
            out[item.get("path") or key] = (data[key], int(item.get("mode") or mode))
        return out

    async def _configmap_files(self, ns: str, src: Obj, mode: int) -> dict[str, tuple[bytes, int]]:
        optional = bool(src.get("optional"))
        cm = await self._get("ConfigMap", ns, src["name"], optional)
        if cm is None:
            return {}
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return self._items(data, src.get("items"), mode, optional, "configmap")

    async def _secret_files(self, ns: str, src: Obj, mode: int) -> dict[str, tuple[bytes, int]]:
        optional = bool(src.get("optional"))
        name = str(src.get("secretName") or src.get("name") or "")
        sec = await self._get("Secret", ns, name, optional)
        if sec is None:
            return {}
        data = {k: base64.b64decode(v) for k, v in (sec.get("data") or {}).items()}
        return self._items(data, src.get("items"), mode, optional, "secret")

    def _downward_files(self, pod: Obj, items: list[Obj], mode: int) -> dict[str, tuple[bytes, int]]:
        out = {}
        first = pod["spec"]["containers"][0]["name"]
        for item in items or []:
            if "fieldRef" in item:
                value = field_value(pod, item["fieldRef"]["fieldPath"])
            else:
                value = resource_value(pod, item["resourceFieldRef"], first, self.node_allocatable)
            out[item["path"]] = (value.encode(), int(item.get("mode") or mode))
        return out

    async def _token(self, pod: Obj, key: str, src: Obj) -> str:
        state = self.tokens.setdefault(key, TokenState())
        now = time.time()
        lifetime = state.expires - state.issued
        if state.token and now < state.issued + 0.8 * lifetime and now < state.issued + 86400:
            return state.token
        ns, sa = pod["metadata"]["namespace"], pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [src["audience"]] if src.get("audience") else [],
                "expirationSeconds": int(src.get("expirationSeconds") or 3600),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"],
                },
            },
        }
        try:
            resp = await self.api.post(f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", body)
        except ApiError as exc:
            raise VolumeError(f"failed to fetch token for serviceaccount {sa}: {exc.message}") from exc
        state.token = resp["status"]["token"]
        state.issued = now
        exp = resp["status"].get("expirationTimestamp")
        state.expires = calendar.timegm(time.strptime(exp, "%Y-%m-%dT%H:%M:%SZ")) if exp else now + 3600
        return state.token

    async def sync(self, pod: Obj) -> None:
        """Create or refresh every volume of the pod (idempotent; cheap when nothing changed)."""
        ns = pod["metadata"]["namespace"]
        vroot = self.pod_dir / "volumes"
        for vol in pod["spec"].get("volumes") or []:
            name = vol["name"]
            path = vroot / name
            if "emptyDir" in vol:
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o777)
            elif "hostPath" in vol:
                hp = Path(vol["hostPath"]["path"])
                htype = vol["hostPath"].get("type") or ""
                if not hp.exists():
                    if htype == "DirectoryOrCreate":
                        hp.mkdir(parents=True, exist_ok=True)
                    elif htype == "FileOrCreate":
                        hp.parent.mkdir(parents=True, exist_ok=True)
                        hp.touch()
                    else:
                        raise VolumeError(f"hostPath type check failed: {hp} does not exist")
                path = hp
            elif "configMap" in vol:
                src = vol["configMap"]
                atomic_write(path, await self._configmap_files(ns, src, int(src.get("defaultMode") or 0o644)))
            elif "secret" in vol:
                src = vol["secret"]
                atomic_write(path, await self._secret_files(ns, src, int(src.get("defaultMode") or 0o644)))
            elif "downwardAPI" in vol:
                src = vol["downwardAPI"]
                atomic_write(
                    path,
                    self._downward_files(pod, src.get("items") or [], int(src.get("defaultMode") or 0o644)),
                )
            elif "projected" in vol:
                proj = vol["projected"]
                mode = int(proj.get("defaultMode") or 0o644)
                files: dict[str, tuple[bytes, int]] = {}
                for i, s in enumerate(proj.get("sources") or []):
                    if "serviceAccountToken" in s:
                        st = s["serviceAccountToken"]
                        token = await self._token(pod, f"{name}/{i}", st)
                        files[st["path"]] = (token.encode(), 0o600 if mode == 0o644 else mode)
                    elif "configMap" in s:
                        files.update(await self._configmap_files(ns, s["configMap"], mode))
                    elif "secret" in s:
                        files.update(await self._secret_files(ns, s["secret"], mode))
                    elif "downwardAPI" in s:
                        files.update(self._downward_files(pod, s["downwardAPI"].get("items") or [], mode))
                    elif "clusterTrustBundle" in s or "podCertificate" in s:
                        raise VolumeError(
                            f"projected source {sorted(s)} is not supported by the kubeloop node agent"
                        )
                atomic_write(path, files)
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                try:
                    await self.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
                except ApiError as exc:
                    raise VolumeError(f'persistentvolumeclaim "{claim}" not found') from exc
                # Node-local storage keyed by claim (like a local-path provisioner); outlives the pod.
                path = self.pod_dir.parent.parent / "claims" / ns / claim
                path.mkdir(parents=True, exist_ok=True)
            elif "ephemeral" in vol:
                path.mkdir(parents=True, exist_ok=True)
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise VolumeError(
                    f"volume {name!r}: type {kinds} is not supported by the kubeloop node agent"
                )
            self.paths[name] = path
