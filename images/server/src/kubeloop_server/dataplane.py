"""The protocol-agnostic data plane (KServe's pattern): health, metadata and inference for both APIs.

It works on decoded JSON values and plain dicts; the REST layer only parses bodies, calls one method and
serialises the result.
"""

from __future__ import annotations

import logging
from typing import Any

from kubeloop_server import __version__
from kubeloop_server.batching import AdaptiveBatcher, Predictor
from kubeloop_server.codec import (
    decode_infer_request,
    encode_infer_response,
    parse_records,
    record_results,
    records_to_feeds,
)
from kubeloop_server.errors import InvalidInputError, ModelNotFoundError
from kubeloop_server.metrics import ServerMetrics
from kubeloop_server.model import Feeds, ModelRuntime, Outputs
from kubeloop_server.predlog import PredictionLogger

log = logging.getLogger("kubeloop_server.dataplane")

SERVER_NAME = "kubeloop-server"
PLATFORM = "onnxruntime_onnx"


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
        self._classification = rt.task == "classification"
        self._pred_out = rt.prediction_output

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
        return {"name": SERVER_NAME, "version": __version__, "extensions": []}

    def check_model(self, name: str, version: str | None) -> None:
        rt = self.runtime
        if name != rt.name:
            raise ModelNotFoundError(f"model {name!r} not found; this server serves {rt.name!r}")
        if version is not None and version != rt.version:
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
        }

    def model_ready(self, name: str, version: str | None) -> tuple[bool, dict[str, Any]]:
        self.check_model(name, version)
        ready = self.is_ready()
        return ready, {"name": name, "ready": ready}

    def metadata(self) -> dict[str, Any]:
        """The record API's GET /metadata: features, types, classes, task, version."""
        d = self.runtime.describe()
        d["batching"] = isinstance(self.predictor, AdaptiveBatcher)
        return d

    # --- inference --------------------------------------------------------------------------------------------

    async def _predict(self, feeds: Feeds, rows: int) -> Outputs:
        outputs = await self.predictor.predict(feeds, rows)
        if self._classification:
            self.metrics.observe_classes(outputs[self._pred_out])
        else:
            self.metrics.observe_values(outputs[self._pred_out])
        if self.predlog is not None:
            self.predlog.record(feeds, outputs, rows)
        return outputs

    async def infer(self, name: str, version: str | None, body: Any) -> dict[str, Any]:
        self.check_model(name, version)
        req = decode_infer_request(self.runtime, body, self.max_rows, self.allow_missing)
        outputs = await self._predict(req.feeds, req.rows)
        return encode_infer_response(self.runtime, req, outputs)

    async def forward(self, body: Any) -> dict[str, Any]:
        if type(body) is not dict:
            raise InvalidInputError("request body must be a JSON object keyed by feature name")
        feeds = records_to_feeds(self.runtime, [body], single=True, allow_missing=self.allow_missing)
        outputs = await self._predict(feeds, 1)
        result = record_results(self.runtime, outputs)[0]
        result["model_version"] = self.runtime.version
        return result

    async def forward_batch(self, body: Any) -> dict[str, Any]:
        records = parse_records(body, self.max_rows)
        feeds = records_to_feeds(self.runtime, records, allow_missing=self.allow_missing)
        outputs = await self._predict(feeds, len(records))
        return {"predictions": record_results(self.runtime, outputs), "model_version": self.runtime.version}
