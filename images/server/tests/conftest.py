"""Fixtures for the inference server's tests: small Kubeloop-format models, in-process apps and real
server subprocesses on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from kubeloop_server.model import ModelRuntime
from kubeloop_server.rest import ServerApp
from kubeloop_server.settings import ServerSettings
from kubeloop_testing.onnx_models import mlp_model
from kubeloop_testing.storage import MemoryStore

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

CATEGORICAL = (("color", ("red", "green", "blue")), ("size", ("S", "M", "L", "XL")))


@pytest.fixture(scope="session")
def packed_clf() -> bytes:
    """30 numeric features in one float32 [N, 30] input; 3 classes."""
    return mlp_model(n_numeric=30, layout="packed", task="classification", name="iris-like", version="3")


@pytest.fixture(scope="session")
def mixed_clf() -> bytes:
    """4 numeric + 2 categorical features, one input per feature; 3 classes."""
    return mlp_model(
        n_numeric=4,
        categorical=CATEGORICAL,
        layout="per_feature",
        task="classification",
        name="mixed",
        version="7",
    )


@pytest.fixture(scope="session")
def mixed_reg() -> bytes:
    """3 numeric + 2 categorical features, one input per feature; regression."""
    return mlp_model(
        n_numeric=3,
        categorical=CATEGORICAL,
        layout="per_feature",
        task="regression",
        name="price",
        version="2",
    )


class Reference:
    """Plain in-process onnxruntime, for comparing the server's answers."""

    def __init__(self, model: bytes) -> None:
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()

    def run_records(self, records: list[dict[str, Any]]) -> list[np.ndarray]:
        if len(self.inputs) == 1 and self.inputs[0].type == "tensor(float)" and self.inputs[0].shape[1] != 1:
            n = self.inputs[0].shape[1]
            x = np.array([[r[f"f{i}"] for i in range(n)] for r in records], dtype=np.float32)
            return self.session.run(None, {self.inputs[0].name: x})  # type: ignore[no-any-return]
        feeds: dict[str, np.ndarray] = {}
        for i in self.inputs:
            col = [r[i.name] for r in records]
            feeds[i.name] = (
                np.array(col, dtype=object).reshape(-1, 1)
                if i.type == "tensor(string)"
                else np.array(col, dtype=np.float32).reshape(-1, 1)
            )
        return self.session.run(None, feeds)  # type: ignore[no-any-return]


@pytest.fixture
def reference() -> Callable[[bytes], Reference]:
    return Reference


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(model_bytes, **settings)`` -> a started TestClient over an in-process server."""
    clients: list[TestClient] = []

    def make(model: bytes, store: Any = None, **overrides: Any) -> TestClient:
        path = tmp_path / f"model-{len(clients)}.onnx"
        path.write_bytes(model)
        overrides.setdefault("grpc_port", 0)  # in-process REST tests; gRPC tests ask for a port
        settings = ServerSettings(model_uri=str(path), **overrides)
        runtime = ModelRuntime(model, name=settings.model_name, version=settings.model_version)
        app = ServerApp(settings, runtime=runtime, store=store)
        client = TestClient(app.app, raise_server_exceptions=False)
        client.__enter__()
        client.server_app = app  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def make_grpc(make_client: Callable[..., TestClient]) -> Iterator[Callable[..., tuple[TestClient, Any]]]:
    """``make_grpc(model_bytes, **settings)`` -> (TestClient, GRPCInferenceServiceStub): one in-process
    server whose lifespan also runs the gRPC service on a free loopback port."""
    import grpc
    from kubeloop_server.oip import grpc_predict_v2_pb2_grpc as pb_grpc

    channels: list[Any] = []

    def make(model: bytes, **overrides: Any) -> tuple[TestClient, Any]:
        client = make_client(model, grpc_port=free_port(), host="127.0.0.1", **overrides)
        channel = grpc.insecure_channel(f"127.0.0.1:{client.server_app.settings.grpc_port}")
        channels.append(channel)
        return client, pb_grpc.GRPCInferenceServiceStub(channel)

    yield make
    for ch in channels:
        ch.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    grpc_port: int = 0
    termination_log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)


def spawn_server(work: Path, index: int, **env: str) -> ServerProcess:
    """``python -m kubeloop_server`` on 127.0.0.1 (free HTTP and gRPC ports), not yet ready."""
    port = free_port()
    log_path = work / f"server-{index}.log"
    termination = work / f"termination-{index}.log"
    full_env = {
        **os.environ,
        "KUBELOOP_SERVER_HOST": "127.0.0.1",
        "KUBELOOP_SERVER_PORT": str(port),
        "KUBELOOP_SERVER_GRPC_PORT": str(free_port()),
        "KUBELOOP_SERVER_TERMINATION_LOG": str(termination),
        **{f"KUBELOOP_SERVER_{k.upper()}": v for k, v in env.items()},
    }
    with log_path.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubeloop_server"], env=full_env, stdout=f, stderr=subprocess.STDOUT
        )
    return ServerProcess(proc, port, log_path, int(full_env["KUBELOOP_SERVER_GRPC_PORT"]), termination)


def wait_ready(sp: ServerProcess, timeout: float) -> ServerProcess:
    deadline = time.monotonic() + timeout
    while True:
        if sp.proc.poll() is not None:
            raise AssertionError(f"server exited with {sp.proc.returncode}:\n{sp.log()}")
        try:
            if httpx.get(sp.url + "/v2/health/ready", timeout=2).status_code == 200:
                return sp
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"server not ready after {timeout}s:\n{sp.log()}")
        time.sleep(0.2)


def _stop_all(procs: list[ServerProcess]) -> None:
    for sp in procs:
        if sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait(10)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``start_server(**env)``: ``python -m kubeloop_server`` on 127.0.0.1, ready when returned."""
    procs: list[ServerProcess] = []

    def start(timeout: float = 90.0, **env: str) -> ServerProcess:
        sp = spawn_server(tmp_path, len(procs), **env)
        procs.append(sp)
        return wait_ready(sp, timeout)

    yield start
    _stop_all(procs)


@pytest.fixture(scope="module")
def start_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., list[ServerProcess]]]:
    """``start_servers([env, ...])``: several servers started at once (their start-ups overlap), kept for
    the whole test module, ready when returned."""
    work = tmp_path_factory.mktemp("servers")
    procs: list[ServerProcess] = []

    def start(envs: list[dict[str, str]], timeout: float = 120.0) -> list[ServerProcess]:
        started = [spawn_server(work, len(procs) + k, **env) for k, env in enumerate(envs)]
        procs.extend(started)
        return [wait_ready(sp, timeout) for sp in started]

    yield start
    _stop_all(procs)


@pytest.fixture
def memory_store() -> MemoryStore:
    return MemoryStore()
