"""The checked-in OIP gRPC stubs are what images/server/tools/gen_oip_stubs.py makes from the checked-in
proto (like the CRDs: a stale stub fails here), and they coexist with Triton's client in one process."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gen_oip_stubs.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kubeloop_gen_oip_stubs", TOOL)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_checked_in_stubs_are_fresh(gen: ModuleType) -> None:
    assert gen.main(["--check"]) == 0, "run: uv run --frozen python images/server/tools/gen_oip_stubs.py"


def test_check_fails_on_a_stale_stub(
    gen: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "oip"
    shutil.copytree(gen.OUT_DIR, copy)
    monkeypatch.setattr(gen, "OUT_DIR", copy)
    assert gen.main(["--check"]) == 0
    stub = copy / "grpc_predict_v2_pb2.py"
    stub.write_text(stub.read_text().replace("inference", "inferencX", 1))
    assert gen.main(["--check"]) == 1


def test_stubs_coexist_with_tritonclient_and_speak_its_wire_format() -> None:
    from kubeloop_server.oip import grpc_predict_v2_pb2 as pb
    from tritonclient.grpc import service_pb2  # registers inference.* in protobuf's default pool

    ours = pb.ModelInferRequest(model_name="m", id="7", raw_input_contents=[b"\x00\x00\x80?"])
    ours.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    ours.parameters["binary_data_output"].bool_param = True
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert (theirs.model_name, theirs.id, list(theirs.inputs[0].shape)) == ("m", "7", [1, 1])
    assert theirs.parameters["binary_data_output"].bool_param
    assert pb.ModelInferRequest.FromString(theirs.SerializeToString()) == ours
    assert (
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name == "inference.GRPCInferenceService"
    )
