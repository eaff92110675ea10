"""The OIP v2 gRPC layer: ``inference.GRPCInferenceService`` (KServe's grpc_predict_v2.proto) over the
same data plane as REST.

A thin servicer on grpc's asyncio server, in the same event loop as the HTTP server: each RPC decodes its
message (:func:`decode_grpc_request`, sharing every tensor check with REST through
:mod:`kubeloop_server.codec`), calls one data-plane method and encodes the answer. Errors become gRPC
status codes through :func:`kubeloop_server.errors.error_status`, the same mapping that gives REST its
HTTP statuses. Outputs travel as ``raw_output_contents`` (as Triton answers); inputs may come either way.
Requests are counted and timed in the same metrics as REST, with ``protocol="grpc"``.

Shutdown follows the REST server's: readiness (``ServerReady``, ``ModelReady``) turns false on SIGTERM
while RPCs are still served; when the HTTP listener closes, :meth:`GrpcServer.begin_stop` stops accepting
RPCs and lets those in flight finish (``graceful_timeout_s``), before the batcher drains and the prediction
log flushes.
"""

# ruff: noqa: N802  # the servicer's methods are the proto's RPC names (ServerLive, ModelInfer, ...)
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import grpc
import numpy as np
from grpc import aio

from kubeloop_server.codec import (
    CONTENTS_FIELD,
    OIP_DTYPES,
    InferRequest,
    assemble_feeds,
    check_header,
    check_numeric,
    new_request_id,
    output_datatype,
    raw_bytes,
    refuse_unsupported,
    tensor_from_raw,
    tensor_from_values,
)
from kubeloop_server.dataplane import DataPlane
from kubeloop_server.errors import InvalidInputError, error_status
from kubeloop_server.metrics import ServerMetrics
from kubeloop_server.model import ModelRuntime, Outputs, TensorSpec
from kubeloop_server.oip import grpc_predict_v2_pb2 as pb
from kubeloop_server.oip import grpc_predict_v2_pb2_grpc as pb_grpc

log = logging.getLogger("kubeloop_server.grpc")

CODES: Final = {c.name: c for c in grpc.StatusCode}
PROTOCOL: Final = "grpc"
Msg = TypeVar("Msg")


# --- decoding and encoding ------------------------------------------------------------------------------------


def _plain_grpc_request(
    rt: ModelRuntime, msg: pb.ModelInferRequest, max_rows: int, allow_missing: bool
) -> InferRequest | None:
    """The most common request (Triton's client), decoded with the fewest steps: one raw tensor of the
    model's one float [N, F] input, no parameters, no output selection. None for anything else (or anything
    wrong): the general path then decodes it or refuses it naming the problem."""
    spec = rt.single_float_input
    if (
        spec is None
        or len(msg.inputs) != 1
        or len(msg.raw_input_contents) != 1
        or msg.outputs
        or msg.parameters
    ):
        return None
    t = msg.inputs[0]
    if t.name != spec.name or t.datatype != spec.datatype or t.parameters or len(t.shape) != 2:
        return None
    if t.HasField("contents"):
        return None
    n, width = t.shape
    if not 0 < n <= max_rows or width < 0 or spec.shape[1] not in (-1, width):
        return None
    raw = msg.raw_input_contents[0]
    dtype = OIP_DTYPES[spec.datatype]
    if len(raw) != n * width * dtype.itemsize:
        return None
    arr = np.frombuffer(raw, dtype=dtype)
    if not check_numeric(arr, allow_missing):
        return None
    return InferRequest(msg.id or new_request_id(), {spec.name: arr.reshape(n, width)}, n, None)


def decode_grpc_request(
    rt: ModelRuntime, msg: pb.ModelInferRequest, max_rows: int, allow_missing: bool, _extra: Any = None
) -> InferRequest:
    """A ``ModelInferRequest``: typed ``contents`` per input, or ``raw_input_contents`` for all of them."""
    if rt.single_float_input is not None:
        plain = _plain_grpc_request(rt, msg, max_rows, allow_missing)
        if plain is not None:
            return plain
    refuse_unsupported(msg.parameters, "request")
    inputs = msg.inputs
    if not inputs:
        raise InvalidInputError("'inputs' must be a non-empty list of tensors")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries but the request has {len(inputs)} inputs; with raw "
            "contents every input needs one, in the order of 'inputs'"
        )
    given: dict[str, tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]] = {}
    for k, t in enumerate(inputs):
        name = t.name
        if not name:
            raise InvalidInputError(f"inputs[{k}].name is empty")
        if name in given:
            raise InvalidInputError(f"input {name!r} is given twice")
        refuse_unsupported(t.parameters, f"input {name!r}")
        if raw and t.HasField("contents") and t.contents.ListFields():
            raise InvalidInputError(
                f"input {name!r} has typed contents but the request uses raw_input_contents; use one or the other"
            )
        given[name] = (t, raw[k] if raw else None)

    def convert(
        name: str, g: tuple[pb.ModelInferRequest.InferInputTensor, bytes | None], spec: TensorSpec
    ) -> np.ndarray:
        t, chunk = g
        shape = list(t.shape)
        if chunk is not None:
            return tensor_from_raw(name, t.datatype, shape, chunk, spec, max_rows, allow_missing)
        check_header(name, t.datatype, shape, spec, max_rows)
        field = CONTENTS_FIELD.get(t.datatype)
        if field is None:
            raise InvalidInputError(f"input {name!r}: {t.datatype} tensors travel only in raw_input_contents")
        for fd, _ in t.contents.ListFields():
            if fd.name != field:
                raise InvalidInputError(
                    f"input {name!r}: datatype {t.datatype} takes contents.{field}, got contents.{fd.name}"
                )
        return tensor_from_values(
            name, t.datatype, shape, getattr(t.contents, field), spec, max_rows, allow_missing
        )

    feeds, rows = assemble_feeds(rt, given, convert)
    outputs: list[int] | None = None
    if msg.outputs:
        outputs = []
        for k, o in enumerate(msg.outputs):
            refuse_unsupported(o.parameters, f"outputs[{k}]")
            try:
                outputs.append(rt.output_names.index(o.name))
            except ValueError:
                raise InvalidInputError(
                    f"outputs[{k}]: unknown output {o.name!r}; the model's outputs are {rt.output_names}"
                ) from None
    return InferRequest(msg.id or new_request_id(), feeds, rows, outputs)


def encode_grpc_response(rt: ModelRuntime, req: InferRequest, outputs: Outputs) -> pb.ModelInferResponse:
    chosen = range(len(outputs)) if req.outputs is None else req.outputs
    tensors = []
    raws = []
    for i in chosen:
        arr = outputs[i]
        datatype = output_datatype(rt, i, arr)
        tensors.append(
            pb.ModelInferResponse.InferOutputTensor(
                name=rt.output_names[i], datatype=datatype, shape=arr.shape
            )
        )
        raws.append(raw_bytes(arr, datatype))
    return pb.ModelInferResponse(
        model_name=rt.name, model_version=rt.version, id=req.id, outputs=tensors, raw_output_contents=raws
    )


# --- the service ---------------------------------------------------------------------------------------------


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six OIP RPCs over the data plane; the model repository RPCs answer UNIMPLEMENTED."""

    def __init__(self, dataplane: DataPlane, metrics: ServerMetrics) -> None:
        self.dp = dataplane
        self.metrics = metrics
        rt = dataplane.runtime
        self._metadata = pb.ModelMetadataResponse(
            name=rt.name,
            versions=[rt.version],
            platform=dataplane.model_metadata(rt.name, None)["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**i.as_oip()) for i in rt.inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**o.as_oip()) for o in rt.outputs],
        )
        meta = dataplane.server_metadata()
        self._server_metadata = pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    def _call(
        self, method: str, context: aio.ServicerContext[Any, Any], empty: Msg, fn: Callable[[], Msg]
    ) -> Msg:
        """Run a synchronous RPC body: time it, count it, map its errors to a status code."""
        t0 = time.perf_counter()
        try:
            reply = fn()
            code = "OK"
        except Exception as e:
            _, code, message = error_status(e)
            context.set_code(CODES[code])
            context.set_details(message)
            reply = empty
        self.metrics.observe_request(PROTOCOL, method, code, time.perf_counter() - t0)
        return reply

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return self._call(
            "ServerLive", context, pb.ServerLiveResponse(), lambda: pb.ServerLiveResponse(live=True)
        )

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return self._call(
            "ServerReady",
            context,
            pb.ServerReadyResponse(),
            lambda: pb.ServerReadyResponse(ready=self.dp.is_ready()),
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        def ready() -> pb.ModelReadyResponse:
            is_ready, _ = self.dp.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=is_ready)

        return self._call("ModelReady", context, pb.ModelReadyResponse(), ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return self._call(
            "ServerMetadata", context, pb.ServerMetadataResponse(), lambda: self._server_metadata
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        def metadata() -> pb.ModelMetadataResponse:
            self.dp.check_model(request.name, request.version or None)
            return self._metadata

        return self._call("ModelMetadata", context, pb.ModelMetadataResponse(), metadata)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        t0 = time.perf_counter()
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            req, outputs = await self.dp.infer(
                request.model_name, request.model_version or None, decode_grpc_request, request
            )
            reply = encode_grpc_response(self.dp.runtime, req, outputs)
            code = "OK"
        except Exception as e:
            _, code, message = error_status(e)
            context.set_code(CODES[code])
            context.set_details(message)
            reply = pb.ModelInferResponse()
        metrics.in_flight -= 1
        metrics.observe_request(PROTOCOL, "ModelInfer", code, time.perf_counter() - t0)
        return reply

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.RepositoryModelLoadResponse:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("the model repository extension is not supported: this server serves one model")
        self.metrics.observe_request(PROTOCOL, "RepositoryModelLoad", "UNIMPLEMENTED", 0.0)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.RepositoryModelUnloadResponse:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("the model repository extension is not supported: this server serves one model")
        self.metrics.observe_request(PROTOCOL, "RepositoryModelUnload", "UNIMPLEMENTED", 0.0)
        return pb.RepositoryModelUnloadResponse()


class GrpcServer:
    """grpc's asyncio server on its own port, sharing the event loop (and the data plane) with REST."""

    def __init__(
        self, dataplane: DataPlane, metrics: ServerMetrics, host: str, port: int, max_message_bytes: int
    ) -> None:
        self.servicer = InferenceServicer(dataplane, metrics)
        self.address = f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.server: aio.Server | None = None
        self.port = 0
        self._stopping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        server = aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                # grpc sets SO_REUSEPORT by default: a second server would then share a busy port silently.
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as e:
            raise RuntimeError(f"gRPC cannot listen on {self.address}: {e}") from e
        await server.start()
        self.server = server
        log.info("gRPC (OIP v2, inference.GRPCInferenceService) listening on %s", self.address)

    def begin_stop(self, grace_s: float) -> None:
        """Stop accepting RPCs now; those in flight get ``grace_s`` to finish (idempotent)."""
        if self.server is not None and self._stopping is None:
            self._stopping = asyncio.ensure_future(self.server.stop(grace_s))

    async def stop(self, grace_s: float) -> None:
        self.begin_stop(grace_s)
        if self._stopping is not None:
            await self._stopping
