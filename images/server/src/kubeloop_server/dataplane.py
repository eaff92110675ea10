"""The protocol-agnostic data plane (KServe's pattern): health, metadata and inference for every API.

The REST layer (:mod:`kubeloop_server.rest`) and the gRPC layer (:mod:`kubeloop_server.grpcapi`) parse
their transport, call one method here and encode its result; validation (:mod:`kubeloop_server.codec`),
batching (the predictor), the prediction and run metrics, and prediction logging happen here, once, for
both. Errors are :class:`~kubeloop_server.errors.ServerError` subclasses, turned into HTTP statuses and
gRPC codes by :func:`kubeloop_server.errors.error_status`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from kubeloop_server import __version__
from kubeloop_server.batching import AdaptiveBatcher, Predictor
from kubeloop_server.codec import InferRequest, parse_records, record_results, records_to_feeds
from kubeloop_server.errors import InvalidInputError, ModelNotFoundError
from kubeloop_server.metrics import ServerMetrics
from kubeloop_server.model import Feeds, ModelRuntime, Outputs
from kubeloop_server.predlog import PredictionLogger

log = logging.getLogger("kubeloop_server.dataplane")

SERVER_NAME = "kubeloop-server"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]

# decode(runtime, payload, max_rows, allow_missing, extra) -> InferRequest: one per protocol (codec).
Decoder = Callable[[ModelRuntime, Any, int, bool, Any], InferRequest]


class DataPlane:
    def __init__(
        self,
        runtime: ModelRuntime,
        predictor: Predictor,
        metrics: ServerMetrics,
        predlog: PredictionLogger | None,
        max_rows: int,
        allow_missing: bool = True,
    ) -> None:
        self.runtime = runtime
        self.predictor = predictor
        self.metrics = metrics
        self.predlog = predlog
        self.max_rows = max_rows
        self.allow_missing = allow_missing
        self.ready = False
        self.draining = False
        rt = runtime
        self._task = rt.task
        # Only read when the task is set, which means the graph has a prediction output.
        self._pred_out = rt.prediction_output if rt.prediction_output is not None else 0
        self._unobserved: list[tuple[Feeds, Outputs, int]] = []  # run by infer_now, not yet observed
        metrics.log_unlogged_inputs.set(len(rt.unlogged_inputs))
        metrics.log_prediction_logged.set(0 if rt.prediction_output is None else 1)

    # --- lifecycle ------------------------------------------------------------------------------------------

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.metrics.ready.set(1 if self.is_ready() else 0)

    def start_draining(self) -> None:
        """SIGTERM: readiness turns false at once; requests are still served."""
        self.draining = True
        self.metrics.ready.set(0)

    def is_ready(self) -> bool:
        return self.ready and not self.draining

    # --- health and metadata (OIP) -----------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def check_model(self, name: str, version: str | None) -> None:
        rt = self.runtime
        if name != rt.name:
            raise ModelNotFoundError(f"model {name!r} not found; this server serves {rt.name!r}")
        if version and version != rt.version:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; this server serves version {rt.version!r}"
            )

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        self.check_model(name, version)
        rt = self.runtime
        return {
            "name": rt.name,
            "versions": [rt.version],
            "platform": PLATFORM,
            "inputs": [i.as_oip() for i in rt.inputs],
            "outputs": [o.as_oip() for o in rt.outputs],
            # Which kind of model this is (a Kubeloop-trained one, or any ONNX graph), whether the record API
            # (/forward, /metadata) fits it and what the prediction log leaves out; scalar values, as OIP
            # parameters are. gRPC's ModelMetadataResponse has no field for these.
            "parameters": {
                "model_kind": rt.kind,
                "record_api": rt.record_api_error is None,
                "prediction_log_unlogged_inputs": "; ".join(
                    f"{k}: {v}" for k, v in rt.unlogged_inputs.items()
                ),
                "prediction_log_prediction": rt.prediction_output is not None,
            },
        }

    def model_ready(self, name: str, version: str | None) -> tuple[bool, dict[str, Any]]:
        self.check_model(name, version)
        ready = self.is_ready()
        return ready, {"name": name, "ready": ready}

    def metadata(self) -> dict[str, Any]:
        """The record API's GET /metadata: kind, features, types, classes, task, version, what is logged.
        A graph whose inputs do not read as features has no record API: 422 saying why."""
        rt = self.runtime
        rt.record_api_check()
        d = rt.describe()
        d["batching"] = isinstance(self.predictor, AdaptiveBatcher)
        d["prediction_logging"] = {
            "enabled": self.predlog is not None,
            "columns": [c.name for c in rt.log_columns],
            "not_logged": [{"input": k, "reason": v} for k, v in rt.unlogged_inputs.items()],
            "prediction": "not logged: " + rt.task_source
            if rt.prediction_output is None
            else ("class label" if rt.task == "classification" else "value"),
        }
        return d

    # --- inference --------------------------------------------------------------------------------------------

    async def _predict(self, feeds: Feeds, rows: int) -> Outputs:
        outputs = self.predictor.try_inline(feeds, rows)
        if outputs is None:
            outputs = await self.predictor.predict(feeds, rows)
        self.observe(feeds, outputs, rows)
        return outputs

    def observe(self, feeds: Feeds, outputs: Outputs, rows: int) -> None:
        """Prediction metrics and the prediction log, for every protocol."""
        if self._task == "classification":
            self.metrics.observe_classes(outputs[self._pred_out])
        elif self._task == "regression":
            self.metrics.observe_values(outputs[self._pred_out])
        if self.predlog is not None:
            self.predlog.record(feeds, outputs, rows)

    async def infer(
        self, name: str, version: str | None, decode: Decoder, payload: Any, extra: Any = None
    ) -> tuple[InferRequest, Outputs]:
        """OIP inference for any protocol: ``decode`` (the protocol's codec) turns ``payload`` into a
        validated request; the result goes back to the protocol layer to encode."""
        req = self.decode_now(name, version, decode, payload, extra)
        # _predict() spelled out: one coroutine less per request when the run is inline
        outputs = self.predictor.try_inline(req.feeds, req.rows)
        if outputs is None:
            outputs = await self.predictor.predict(req.feeds, req.rows)
        self.observe(req.feeds, outputs, req.rows)
        return req, outputs

    def decode_now(
        self, name: str, version: str | None, decode: Decoder, payload: Any, extra: Any = None
    ) -> InferRequest:
        """The first half of :meth:`infer` (model check, decoding); the fast lane's merging calls it alone."""
        self.check_model(name, version)
        return decode(self.runtime, payload, self.max_rows, self.allow_missing, extra)

    def infer_now(
        self,
        name: str,
        version: str | None,
        decode: Decoder,
        payload: Any,
        extra: Any = None,
        predictor: Predictor | None = None,
    ) -> tuple[InferRequest, Outputs]:
        """:meth:`infer` without a coroutine, for a predictor that always runs inline (``always_inline``;
        the server's own unless ``predictor`` is given): the HTTP fast lane answers from inside the parser's
        callback. The prediction metrics and log wait for :meth:`observe_deferred`, which the caller calls
        once the answer is on its way (they are no part of the answer)."""
        req = self.decode_now(name, version, decode, payload, extra)
        p = self.predictor if predictor is None else predictor
        outputs = p.try_inline(req.feeds, req.rows)
        if outputs is None:  # a predictor that is not always inline: the caller broke the contract
            raise RuntimeError(f"{type(p).__name__} did not run the request inline")
        self._unobserved.append((req.feeds, outputs, req.rows))
        return req, outputs

    def observe_deferred(self) -> None:
        """:meth:`observe` what :meth:`infer_now` deferred. Several requests (the answers of one event-loop
        turn) are observed as one run of all their rows, as a merged run is: one prediction-log chunk and
        vectorised metrics instead of a chunk and a metrics update per request, which cost the loop's
        thread, and the log's writer per chunk, more than the rows themselves. Only for a model whose
        every output has one entry per row (``batchable``); requests whose tensors differ past the batch
        axis are observed one by one."""
        if not self._unobserved:
            return
        pending, self._unobserved = self._unobserved, []
        if len(pending) > 1 and self.runtime.batchable:
            first_feeds, first_outputs, _ = pending[0]
            try:
                feeds = {name: np.concatenate([p[0][name] for p in pending]) for name in first_feeds}
                outputs = [np.concatenate([p[1][i] for p in pending]) for i in range(len(first_outputs))]
            except ValueError:
                pass
            else:
                self.observe(feeds, outputs, sum(p[2] for p in pending))
                return
        for feeds, outputs, rows in pending:
            self.observe(feeds, outputs, rows)

    async def forward(self, body: Any) -> dict[str, Any]:
        self.runtime.record_api_check()
        if type(body) is not dict:
            raise InvalidInputError("request body must be a JSON object keyed by feature name")
        feeds = records_to_feeds(self.runtime, [body], single=True, allow_missing=self.allow_missing)
        outputs = await self._predict(feeds, 1)
        result = record_results(self.runtime, outputs, 1)[0]
        result["model_version"] = self.runtime.version
        return result

    async def forward_batch(self, body: Any) -> dict[str, Any]:
        self.runtime.record_api_check()
        records = parse_records(body, self.max_rows)
        feeds = records_to_feeds(self.runtime, records, allow_missing=self.allow_missing)
        outputs = await self._predict(feeds, len(records))
        return {
            "predictions": record_results(self.runtime, outputs, len(records)),
            "model_version": self.runtime.version,
        }
