"""Quick checks of the benchmarks themselves (the benchmarks run with ``make bench-*``, never here).

* the server benchmark's answer check can fail: a wrong prediction is counted by wrk's Lua hook and by
  the Python load generator, a right one is not, and the floor starts on kubeloop-server's own uvicorn
  settings; the same for the gRPC generator against the floor's fixed gRPC answer;
* the trainer benchmark, on a tiny configuration, compares like with like (same optimizer settings) and
  ends with a RESULT line holding every key.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import orjson
import pytest
from kubeloop_testing.onnx_models import mlp_model

BENCH = Path(__file__).resolve().parents[1]


def load_module(name: str, path: Path, mp: pytest.MonkeyPatch) -> ModuleType:
    """Import a bench script by path, registered in sys.modules only while ``mp`` is active."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    mp.setitem(sys.modules, name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def server_bench() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        # bench.py imports its sibling as ``loadgen`` (bench/api has another module of that name)
        load_module("loadgen", BENCH / "server" / "loadgen.py", mp)
        load_module("grpc_loadgen", BENCH / "server" / "grpc_loadgen.py", mp)
        yield load_module("kubeloop_bench_server", BENCH / "server" / "bench.py", mp)


def grpc_answer(values: list[float]) -> bytes:
    from kubeloop_server.oip import grpc_predict_v2_pb2 as pb

    msg = pb.ModelInferResponse(model_name="tabular", model_version="1", id="x")
    msg.outputs.add(name="probabilities", datatype="FP32", shape=[1, len(values)])
    msg.raw_output_contents.append(np.asarray(values, dtype="<f4").tobytes())
    return bytes(msg.SerializeToString())


def answer(values: list[float], name: str = "probabilities", **extra: object) -> bytes:
    out = {"name": name, "datatype": "FP32", "shape": [1, len(values)], **extra, "data": values}
    return orjson.dumps({"model_name": "tabular", "id": "x", "outputs": [out]})


def test_expected_accepts_the_right_prediction_and_refuses_others(server_bench: ModuleType) -> None:
    exp = server_bench.Expected(("probabilities",), ((0.25, 0.5, 0.25),))
    assert exp.check(answer([0.25, 0.5, 0.25]))
    assert exp.check(answer([0.2500001, 0.5, 0.25], parameters={"content_type": "np"}))  # MLServer's shape
    for wrong in (
        answer([0.25, 0.25, 0.5]),
        answer([0.251, 0.5, 0.25]),
        answer([0.25, 0.5]),
        answer([0.25, 0.5, 0.25, 0.0]),
        answer([0.25, 0.5, 0.25], name="label"),
        b'{"outputs":[]}',
        b'{"error":"bad"}',
        b"not json",
    ):
        assert not exp.check(wrong), wrong


@pytest.fixture(scope="module")
def floors(server_bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Two floors on kubeloop-server's uvicorn settings: one answers the right prediction, one a wrong one."""
    work = tmp_path_factory.mktemp("floor")
    model = work / "model.onnx"
    model.write_bytes(mlp_model(n_numeric=4, hidden=(8,), name="tabular", version="1"))
    servers: dict[str, object] = {}
    try:
        for name, values in (("right", [0.25, 0.5, 0.25]), ("wrong", [0.5, 0.25, 0.25])):
            (work / name).mkdir()
            (work / f"{name}.json").write_bytes(answer(values))
            (work / f"{name}.grpc").write_bytes(grpc_answer(values))
            servers[name] = server_bench.start_floor(
                model, work / name, work / f"{name}.json", work / f"{name}.grpc"
            )
        servers["expected"] = server_bench.Expected(("probabilities",), ((0.25, 0.5, 0.25),))
        servers["work"] = work
        yield servers
    finally:
        for s in servers.values():
            if isinstance(s, server_bench.Server):
                s.stop()


@pytest.mark.parametrize(
    "tool",
    [
        pytest.param(
            "wrk", marks=pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed here")
        ),
        "python",
    ],
)
def test_load_counts_wrong_answers(server_bench: ModuleType, floors: dict[str, object], tool: str) -> None:
    body = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    results = {}
    for name in ("right", "wrong"):
        s = floors[name]
        url = s.base + s.infer_path.format(model="tabular")  # type: ignore[attr-defined]
        results[name] = server_bench.load(url, body, floors["expected"], 2, 1.0, tool, floors["work"])
    right, wrong = results["right"], results["wrong"]
    assert right.checked > 0, right
    assert (right.wrong, right.failed) == (0, 0), right
    assert wrong.checked > 0, wrong
    assert (wrong.wrong, wrong.failed) == (wrong.checked, 0), wrong
    assert '"data":[0.5,0.25,0.25]' in wrong.wrong_sample


def test_floor_reports_the_servers_uvicorn_settings(floors: dict[str, object]) -> None:
    log = floors["right"].log_path.read_text()  # type: ignore[attr-defined]
    line = next(x for x in log.splitlines() if x.startswith("floor:") and "uvicorn.Config" in x)
    assert '"loop": "uvloop"' in line, line
    assert '"http": "httptools"' in line, line
    assert any(x.startswith("floor: gRPC ModelInfer answers a fixed") for x in log.splitlines()), log


def test_fast_lane_floor_answers_the_fixed_reply(server_bench: ModuleType, tmp_path: Path) -> None:
    """The like-for-like floor of the server's HTTP fast lane: the server process, lane and all, answering
    the fixed reply; its answers go through the same check (a wrong one is counted)."""
    model = tmp_path / "model.onnx"
    model.write_bytes(mlp_model(n_numeric=4, name="tabular", version="1"))
    (tmp_path / "wrong.json").write_bytes(answer([0.5, 0.25, 0.25]))
    (tmp_path / "wrong.grpc").write_bytes(grpc_answer([0.5, 0.25, 0.25]))
    s = server_bench.start_floor(
        model, tmp_path, tmp_path / "wrong.json", tmp_path / "wrong.grpc", kind="lane"
    )
    try:
        assert s.name == "floor-fast-lane"
        log = s.log_path.read_text()
        assert "floor: the server's HTTP fast lane answers a fixed reply" in log, log
        assert "uvicorn.Config" not in log  # the server's own uvicorn set-up, protocol included
        body = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
        expected = server_bench.Expected(("probabilities",), ((0.25, 0.5, 0.25),))
        m = server_bench.load(
            s.base + s.infer_path.format(model="tabular"), body, expected, 2, 1.0, "python", tmp_path
        )
        assert m.checked > 0, m
        assert (m.wrong, m.failed) == (m.checked, 0), m
    finally:
        s.stop()


def test_grpc_load_counts_wrong_answers_from_the_grpc_floor(
    server_bench: ModuleType, floors: dict[str, object]
) -> None:
    """The gRPC floor is kubeloop-server's own gRPC server answering its fixed message; the generator checks
    every answer, so the floor with the wrong prediction gets all of its answers counted wrong."""
    from kubeloop_server.oip import grpc_predict_v2_pb2 as pb

    req = pb.ModelInferRequest(model_name="tabular")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.asarray([1, 2, 3, 4], dtype="<f4").tobytes())
    results = {}
    for name in ("right", "wrong"):
        s = floors[name]
        results[name] = server_bench.grpc_measure(s, req.SerializeToString(), floors["expected"], 2, 1.0)
    right, wrong = results["right"], results["wrong"]
    assert right.checked > 0, right
    assert (right.wrong, right.failed) == (0, 0), right
    assert wrong.checked > 0, wrong
    assert (wrong.wrong, wrong.failed) == (wrong.checked, 0), wrong


def test_trainer_bench_tiny_run_is_like_for_like_and_ends_with_every_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mod = load_module("kubeloop_bench_trainer", BENCH / "trainer" / "bench_trainer.py", mp)
        try:
            mod.main(["--rows", "1500", "--epochs", "1", "--repeats", "1", "--hidden", "8"])
        finally:
            torch.set_num_threads(threads)  # the bench sets it for the whole process
    lines = capsys.readouterr().out.strip().splitlines()
    trainer_opt = next(x for x in lines if x.startswith("optimizer: trainer")).split("trainer", 1)[1]
    plain_opt = next(x for x in lines if x.strip().startswith("plain ")).split("plain", 1)[1]
    assert trainer_opt.strip() == plain_opt.strip()
    assert "'fused': True" in trainer_opt
    assert lines[-1].startswith("RESULT ")
    result = dict(kv.split("=") for kv in lines[-1].split()[1:])
    assert set(result) == {
        "trainer_vs_plain_torch",
        "validation_cost",
        "checkpoint_cost",
        "bookkeeping_cost",
        "train_only_vs_plain_torch",
        "trainer_vs_plain_torch_cpu",
    }
    assert float(result["trainer_vs_plain_torch"]) > 0
    for key in ("validation_cost", "checkpoint_cost", "bookkeeping_cost"):
        assert 0 < float(result[key]) < 1, (key, result)


def test_trainer_gpu_bench_dry_run_on_the_cpu_ends_with_every_key() -> None:
    """bench-trainer-gpu's dry run (``--device cpu``): the trainer's DeepSpeed config and a variant against
    the plain loop, the optimizers checked equal, the profile, and a RESULT line with every key. In a
    subprocess: it initialises a process group."""
    import subprocess

    args = ["--device", "cpu", "--shapes", "example", "--steps", "3", "--rounds", "1"]
    r = subprocess.run(
        [
            sys.executable,
            str(BENCH / "trainer" / "bench_gpu.py"),
            *args,
            "--variants",
            "session3_config",
            "--profile",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert any(x.startswith("example [trainer, DeepSpeedZeroOptimizer]") for x in lines), r.stdout
    assert any(x.startswith("example [session3_config, DeepSpeedZeroOptimizer]") for x in lines), r.stdout
    assert any(x.startswith("example deepspeed: host us/step") for x in lines), r.stdout
    assert any(x.startswith("example plain: host us/step") for x in lines), r.stdout
    assert lines[-1].startswith("RESULT ")
    result = {k: float(v) for k, v in (kv.split("=") for kv in lines[-1].split()[1:])}
    assert set(result) == {
        f"{key}_example{suffix}"
        for key in ("ds_vs_plain", "ds_ms", "plain_ms")
        for suffix in ("", "_session3_config")
    }
    assert all(v > 0 for v in result.values()), result


def test_grpc_and_batch_answer_checks_can_fail(server_bench: ModuleType) -> None:
    """The gRPC answer check (raw or typed contents) and the 1,000-row checks (JSON, binary) refuse wrong
    predictions and accept right ones."""
    import numpy as np
    from kubeloop_server.oip import grpc_predict_v2_pb2 as pb

    exp = server_bench.Expected(("probabilities",), ((0.25, 0.5, 0.25),))

    def grpc_answer(values: list[float], raw: bool = True) -> bytes:
        r = pb.ModelInferResponse(model_name="tabular")
        out = r.outputs.add(name="probabilities", datatype="FP32", shape=[1, len(values)])
        if raw:
            r.raw_output_contents.append(np.asarray(values, dtype="<f4").tobytes())
        else:
            out.contents.fp32_contents.extend(values)
        return bytes(r.SerializeToString())

    assert exp.check_grpc(grpc_answer([0.25, 0.5, 0.25]))
    assert exp.check_grpc(grpc_answer([0.25, 0.5, 0.25], raw=False))  # MLServer's typed contents
    for wrong in (grpc_answer([0.5, 0.25, 0.25]), grpc_answer([0.25, 0.5]), b"\xff\x00junk"):
        assert not exp.check_grpc(wrong)
    expected = np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]], dtype=np.float32)
    checks = server_bench.batch_check(expected)
    right_json = orjson.dumps({"outputs": [{"data": expected.reshape(-1).tolist()}]})
    head = orjson.dumps({"outputs": [{"parameters": {"binary_data_size": 24}}]})
    assert checks["json"](0, right_json)
    assert checks["binary"](0, head + expected.tobytes())
    assert not checks["json"](0, orjson.dumps({"outputs": [{"data": expected[::-1].reshape(-1).tolist()}]}))
    assert not checks["binary"](0, head + expected[::-1].tobytes())
    assert not checks["binary"](0, head + expected.tobytes()[:-4])
