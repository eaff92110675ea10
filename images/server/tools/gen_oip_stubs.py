"""Generate the OIP v2 gRPC stubs of kubeloop-server from the checked-in proto (dev tool, not shipped).

    uv run --frozen python images/server/tools/gen_oip_stubs.py          # rewrite the stubs
    uv run --frozen python images/server/tools/gen_oip_stubs.py --check  # exit 1 if they are stale

Input: ``src/kubeloop_server/oip/grpc_predict_v2.proto`` (KServe's published grpc_predict_v2.proto).
Output, next to it: ``grpc_predict_v2_pb2.py`` and ``grpc_predict_v2_pb2_grpc.py`` (grpcio-tools' protoc)
and their typed stubs ``.pyi`` (mypy-protobuf's plugins), so mypy --strict checks our use of them.

One change is made to protoc's output, on purpose: the messages are registered in a descriptor pool of
their own instead of protobuf's default pool. Triton's client (``tritonclient.grpc``) and MLServer register
the same ``inference.*`` message names from their own protos in the default pool, and protobuf refuses a
second definition of a name there; with a private pool the server's messages coexist with those in one
process. Names and field numbers are unchanged, so the wire format and the gRPC method paths
(``/inference.GRPCInferenceService/ModelInfer``) are exactly the proto's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SERVER = Path(__file__).resolve().parents[1]
SRC = SERVER / "src"
PROTO = Path("kubeloop_server/oip/grpc_predict_v2.proto")
OUT_DIR = SRC / PROTO.parent
GENERATED = (
    "grpc_predict_v2_pb2.py",
    "grpc_predict_v2_pb2.pyi",
    "grpc_predict_v2_pb2_grpc.py",
    "grpc_predict_v2_pb2_grpc.pyi",
)
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = (
    "_descriptor_pool.DescriptorPool().AddSerializedFile(  "
    "# kubeloop: a private pool (tools/gen_oip_stubs.py)\n    "
)


def _plugin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev dependency group (mypy-protobuf)")
    return found


def generate(out: Path) -> dict[str, bytes]:
    """Run protoc into ``out`` and return the generated files by name, post-processed."""
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{SRC}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        str(PROTO),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    files = {name: (out / PROTO.parent / name).read_bytes() for name in GENERATED}
    pb2 = files["grpc_predict_v2_pb2.py"].decode()
    if pb2.count(DEFAULT_POOL) != 1:
        raise SystemExit("protoc's output no longer registers the file in the default pool; update this tool")
    files["grpc_predict_v2_pb2.py"] = pb2.replace(DEFAULT_POOL, PRIVATE_POOL).encode()
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare with the checked-in stubs; exit 1 if stale")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
    stale = [
        n for n, data in files.items() if not (OUT_DIR / n).is_file() or (OUT_DIR / n).read_bytes() != data
    ]
    if a.check:
        if stale:
            print(
                f"stale OIP stubs in {OUT_DIR}: {', '.join(stale)}; run images/server/tools/gen_oip_stubs.py",
                file=sys.stderr,
            )
            return 1
        print("OIP stubs are up to date")
        return 0
    for n, data in files.items():
        (OUT_DIR / n).write_bytes(data)
    print(f"wrote {', '.join(files)} in {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
