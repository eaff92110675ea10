"""The OIP v2 gRPC layer: ``inference.GRPCInferenceService`` (KServe's grpc_predict_v2.proto) over the
same data plane as REST.

A thin servicer on the server's own gRPC wire (:mod:`kubeloop_server.h2grpc`), in the same event loop as
the HTTP server: each RPC decodes its message (:func:`decode_grpc_request`, sharing every tensor check with
REST through :mod:`kubeloop_server.codec`), calls one data-plane method and encodes the answer. Errors
become gRPC status codes through :func:`kubeloop_server.errors.error_status`, the same mapping that gives
REST its HTTP statuses. Outputs travel as ``raw_output_contents`` (as Triton answers); inputs may come
either way. Requests are counted and timed in the same metrics as REST, with ``protocol="grpc"``. With a
predictor that runs at once (batching off), ModelInfer is answered inside the read that completed it and
its prediction metrics and log follow the write, as on the HTTP fast lane; otherwise it waits in a task.

Shutdown follows the REST server's: readiness (``ServerReady``, ``ModelReady``) turns false on SIGTERM
while RPCs are still served; when the HTTP listener closes, :meth:`GrpcServer.begin_stop` stops accepting
RPCs and lets those in flight finish (``graceful_timeout_s``), before the batcher drains and the prediction
log flushes.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import numpy as np

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
from kubeloop_server.errors import InvalidInputError, UnimplementedError
from kubeloop_server.h2grpc import GrpcWire, Method
from kubeloop_server.metrics import ServerMetrics
from kubeloop_server.model import ModelRuntime, Outputs, TensorSpec
from kubeloop_server.oip import grpc_predict_v2_pb2 as pb

log = logging.getLogger("kubeloop_server.grpc")

PROTOCOL: Final = "grpc"
SERVICE: Final = "/inference.GRPCInferenceService/"


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


class InferenceServicer:
    """The six OIP RPCs over the data plane; the model repository RPCs answer UNIMPLEMENTED. Each method
    takes the parsed request and returns the serialised reply, or raises (the wire maps the error)."""

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
        ).SerializeToString()
        meta = dataplane.server_metadata()
        self._server_metadata = pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        ).SerializeToString()
        self._live = pb.ServerLiveResponse(live=True).SerializeToString()

    def methods(self) -> dict[str, Method]:
        """The routes, by HTTP/2 path. ModelInfer runs at once when the predictor always does."""
        dp = self.dp
        infer_async = None if dp.predictor.always_inline else self.model_infer_async
        repo = "the model repository extension is not supported: this server serves one model"

        def unimplemented(_req: Any) -> bytes:
            raise UnimplementedError(repo)

        routes = [
            Method("ServerLive", pb.ServerLiveRequest.FromString, lambda _r: self._live),
            Method("ServerReady", pb.ServerReadyRequest.FromString, self.server_ready),
            Method("ModelReady", pb.ModelReadyRequest.FromString, self.model_ready),
            Method("ServerMetadata", pb.ServerMetadataRequest.FromString, lambda _r: self._server_metadata),
            Method("ModelMetadata", pb.ModelMetadataRequest.FromString, self.model_metadata),
            Method(
                "ModelInfer",
                pb.ModelInferRequest.FromString,
                self.model_infer,
                infer_async,
                dp.observe_deferred,
            ),
            Method("RepositoryModelLoad", pb.RepositoryModelLoadRequest.FromString, unimplemented),
            Method("RepositoryModelUnload", pb.RepositoryModelUnloadRequest.FromString, unimplemented),
        ]
        return {SERVICE + m.name: m for m in routes}

    def server_ready(self, _req: pb.ServerReadyRequest) -> bytes:
        return pb.ServerReadyResponse(ready=self.dp.is_ready()).SerializeToString()

    def model_ready(self, req: pb.ModelReadyRequest) -> bytes:
        ready, _ = self.dp.model_ready(req.name, req.version or None)
        return pb.ModelReadyResponse(ready=ready).SerializeToString()

    def model_metadata(self, req: pb.ModelMetadataRequest) -> bytes:
        self.dp.check_model(req.name, req.version or None)
        return self._metadata

    def model_infer(self, request: pb.ModelInferRequest) -> bytes:
        """At once, with a predictor that always runs inline; the wire calls ``observe_deferred`` after
        the write."""
        req, outputs = self.dp.infer_now(
            request.model_name, request.model_version or None, decode_grpc_request, request
        )
        return encode_grpc_response(self.dp.runtime, req, outputs).SerializeToString()

    async def model_infer_async(self, request: pb.ModelInferRequest) -> bytes:
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            req, outputs = await self.dp.infer(
                request.model_name, request.model_version or None, decode_grpc_request, request
            )
            return encode_grpc_response(self.dp.runtime, req, outputs).SerializeToString()
        finally:
            metrics.in_flight -= 1


class GrpcServer:
    """The OIP gRPC service on its own port, sharing the event loop (and the data plane) with REST."""

    def __init__(
        self, dataplane: DataPlane, metrics: ServerMetrics, host: str, port: int, max_message_bytes: int
    ) -> None:
        self.servicer = InferenceServicer(dataplane, metrics)
        self.host = host
        self.requested_port = port
        self.metrics = metrics
        self.wire = GrpcWire(self.servicer.methods(), self._observe, max_message_bytes)
        self.port = 0

    def _observe(self, method: str, code: str, seconds: float) -> None:
        self.metrics.observe_request(PROTOCOL, method, code, seconds)

    async def start(self) -> None:
        try:
            await self.wire.start(self.host, self.requested_port)
        except OSError as e:
            raise RuntimeError(f"gRPC cannot listen on {self.host}:{self.requested_port}: {e}") from e
        self.port = self.wire.port
        log.info("gRPC (OIP v2, inference.GRPCInferenceService) listening on %s:%d", self.host, self.port)

    def begin_stop(self) -> None:
        """Stop accepting RPCs now; those in flight get until :meth:`stop`'s grace to finish (idempotent)."""
        self.wire.begin_stop()

    async def stop(self, grace_s: float) -> None:
        await self.wire.stop(grace_s)
