"""The minimal custom MLServer runtime its documentation describes, wrapping ONNX Runtime.

MLServer has no official ONNX runtime on PyPI, so the benchmark serves the same model.onnx through this
``MLModel`` subclass: ``load()`` creates one session (same session options as kubeloop-server),
``predict()`` decodes each input with MLServer's NumpyCodec, runs the session and encodes every output.
Runs inside MLServer's own virtualenv (bench/.envs/mlserver), not the workspace.
"""

from __future__ import annotations

import os

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings, wellknown_filenames=["model.onnx"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(os.environ.get("BENCH_ORT_THREADS", "1"))
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(uri, sess_options=so, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.ready = True
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        outputs = self._session.run(self._output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(n, o) for n, o in zip(self._output_names, outputs, strict=False)
            ],
        )
