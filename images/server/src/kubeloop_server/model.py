"""The model runtime: one ONNX Runtime session, created once, plus what the graph and its metadata say
about inputs and outputs.

Two input layouts are supported, decided from :class:`~kubeloop.contracts.ModelMetadata` and the graph:

* ``per_feature`` — one graph input per feature, ``float32 [N, 1]`` (or ``[N]``) for numeric and
  ``string [N, 1]`` (or ``[N]``) for categorical features; matched by name, else by position;
* ``packed`` — a single ``float32 [N, F]`` input holding every feature (all-numeric models).

Classification graphs produce a probabilities output ``[N, C]`` mapped to ``ModelMetadata.classes``;
regression graphs a ``[N, 1]`` or ``[N]`` output.
"""

from __future__ import annotations

import ctypes
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from kubeloop.contracts import ModelMetadata
from kubeloop.cpus import cpu_limit
from kubeloop_server.errors import InferenceError, InvalidInputError, ModelLoadError

log = logging.getLogger("kubeloop_server.model")

Feeds = dict[str, np.ndarray]
Outputs = list[np.ndarray]
Layout = Literal["per_feature", "packed"]

# ONNX tensor type -> (OIP datatype, numpy dtype)
_ORT_TYPES: Final[dict[str, tuple[str, Any]]] = {
    "tensor(float)": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(int16)": ("INT16", np.int16),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(uint16)": ("UINT16", np.uint16),
    "tensor(uint32)": ("UINT32", np.uint32),
    "tensor(uint64)": ("UINT64", np.uint64),
    "tensor(bool)": ("BOOL", np.bool_),
    "tensor(string)": ("BYTES", np.object_),
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A graph input or output as OIP describes it (``-1`` for a variable dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: Any  # numpy dtype class
    is_float: bool = False
    is_string: bool = False

    @classmethod
    def of(cls, name: str, datatype: str, shape: tuple[int, ...], dtype: Any) -> TensorSpec:
        return cls(name, datatype, shape, dtype, datatype in ("FP32", "FP64", "FP16"), datatype == "BYTES")

    def as_oip(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class FeatureInput:
    """Where one feature goes in the graph (per-feature layout: its own input; packed: a column)."""

    name: str
    numeric: bool
    input: TensorSpec
    column: int  # packed layout: column in the [N, F] input; per-feature: 0


def _tensor_spec(arg: Any) -> TensorSpec:
    try:
        datatype, dtype = _ORT_TYPES[arg.type]
    except KeyError as e:
        raise ModelLoadError(f"graph tensor {arg.name!r} has unsupported type {arg.type}") from e
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec.of(arg.name, datatype, shape, dtype)


def gpu_present() -> bool:
    """A CUDA driver is loadable (cheap; avoids ORT's noisy failure when there is no GPU)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


class ModelRuntime:
    """An ONNX model ready to run: session, metadata, input layout and output mapping."""

    def __init__(
        self,
        model_bytes: bytes,
        *,
        name: str = "",
        version: str = "",
        device: Literal["auto", "cpu", "cuda"] = "auto",
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
    ) -> None:
        self.threads = intra_op_threads or cpu_limit()
        self.session = self._create_session(model_bytes, device, self.threads, allow_spinning)
        self.provider: str = self.session.get_providers()[0]
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.metadata = ModelMetadata.from_props(props)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
        md = self.metadata
        self.name = name or md.model_name or "model"
        self.version = version or md.model_version or "1"
        self.task = md.task
        self.inputs = [_tensor_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_tensor_spec(a) for a in self.session.get_outputs()]
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in self.outputs]
        self.feature_names = [f.name for f in md.features]
        self.layout, self.features = self._resolve_layout()
        self.feature_index = {f.name: f for f in self.features}
        self.all_numeric = all(f.numeric for f in self.features)
        self.prediction_output = self._resolve_prediction_output()
        self.classes: list[str] = list(md.classes)
        # The bound C++ run method skips the Python wrapper's per-call input-name checks (the codec has
        # already validated names, types and shapes); fall back to the public API if ORT ever moves it.
        inner = getattr(self.session, "_sess", None)
        self._run = inner.run if inner is not None else self.session.run
        self.batchable = False
        self.single_row_s = 0.0
        self._warm_up()

    # --- construction ----------------------------------------------------------------------------------

    @staticmethod
    def _create_session(
        model_bytes: bytes, device: str, threads: int, allow_spinning: bool
    ) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        available = ort.get_available_providers()
        cuda_ok = "CUDAExecutionProvider" in available
        if device == "cuda" and not cuda_ok:
            raise ModelLoadError(f"device=cuda but CUDAExecutionProvider is not available (have {available})")
        use_cuda = device == "cuda" or (device == "auto" and cuda_ok and gpu_present())
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        )
        try:
            session = ort.InferenceSession(model_bytes, sess_options=so, providers=providers)
        except Exception as e:
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {e}") from e
        if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
            raise ModelLoadError("device=cuda but the CUDA execution provider failed to initialise")
        return session

    def _resolve_layout(self) -> tuple[Layout, list[FeatureInput]]:
        feats = self.metadata.features
        if not feats:
            raise ModelLoadError("ONNX metadata lists no features")
        ins = self.inputs
        all_numeric = all(f.type == "numeric" for f in feats)
        if len(ins) == len(feats):
            by_name = {i.name: i for i in ins}
            if set(by_name) == {f.name for f in feats}:
                pairs = [(f, by_name[f.name]) for f in feats]
            else:
                pairs = list(zip(feats, ins, strict=True))
            out: list[FeatureInput] = []
            for f, inp in pairs:
                numeric = f.type == "numeric"
                if numeric and (inp.is_string or inp.datatype == "BOOL"):
                    raise ModelLoadError(
                        f"feature {f.name!r} is numeric but graph input {inp.name!r} is {inp.datatype}"
                    )
                if not numeric and not inp.is_string:
                    raise ModelLoadError(
                        f"feature {f.name!r} is categorical but graph input {inp.name!r} is {inp.datatype}, not string"
                    )
                if len(inp.shape) not in (1, 2) or (len(inp.shape) == 2 and inp.shape[1] not in (1, -1)):
                    raise ModelLoadError(
                        f"graph input {inp.name!r} has shape {list(inp.shape)}; expected [N, 1] or [N]"
                    )
                out.append(FeatureInput(f.name, numeric, inp, 0))
            return "per_feature", out
        if len(ins) == 1 and all_numeric:
            inp = ins[0]
            if not inp.is_float or len(inp.shape) != 2 or inp.shape[1] not in (len(feats), -1):
                raise ModelLoadError(
                    f"single graph input {inp.name!r} is {inp.datatype} {list(inp.shape)}; expected a float "
                    f"[N, {len(feats)}] tensor for {len(feats)} numeric features"
                )
            return "packed", [FeatureInput(f.name, True, inp, j) for j, f in enumerate(feats)]
        raise ModelLoadError(
            f"graph inputs {self.input_names} fit neither one input per feature ({len(feats)} features) nor a "
            "single [N, F] tensor of numeric features"
        )

    def _resolve_prediction_output(self) -> int:
        floats = [i for i, o in enumerate(self.outputs) if o.is_float]
        if not floats:
            raise ModelLoadError(f"graph has no floating-point output (outputs: {self.output_names})")
        if self.metadata.task == "classification":
            for i in floats:
                if "prob" in self.outputs[i].name.lower():
                    return i
            n_classes = len(self.metadata.classes)
            for i in floats:
                shape = self.outputs[i].shape
                if len(shape) == 2 and shape[1] in (n_classes, -1):
                    return i
        return floats[0]

    def dummy_feeds(self, n: int) -> Feeds:
        feeds: Feeds = {}
        width = len(self.features) if self.layout == "packed" else 1
        for inp in self.inputs:
            shape = tuple(n if k == 0 else (width if d == -1 else d) for k, d in enumerate(inp.shape)) or (n,)
            if inp.is_string:
                feeds[inp.name] = np.full(shape, "", dtype=np.object_)
            else:
                feeds[inp.name] = np.zeros(shape, dtype=inp.dtype)
        return feeds

    def _warm_up(self) -> None:
        try:
            one = self.run(self.dummy_feeds(1))
            two = self.run(self.dummy_feeds(2))
        except Exception as e:
            raise ModelLoadError(f"model failed a warm-up run on zero/empty inputs: {e}") from e
        self.batchable = all(
            a.ndim >= 1 and b.ndim >= 1 and a.shape[0] == 1 and b.shape[0] == 2
            for a, b in zip(one, two, strict=True)
        )
        pred = one[self.prediction_output]
        if self.task == "classification":
            if pred.ndim != 2:
                raise ModelLoadError(
                    f"classification output {self.output_names[self.prediction_output]!r} has shape "
                    f"{list(pred.shape)}; expected probabilities [N, C]"
                )
            if not self.classes:
                self.classes = [str(c) for c in range(pred.shape[1])]
            elif len(self.classes) != pred.shape[1]:
                raise ModelLoadError(
                    f"metadata lists {len(self.classes)} classes but output "
                    f"{self.output_names[self.prediction_output]!r} has {pred.shape[1]} columns"
                )
        elif pred.size != 1:
            raise ModelLoadError(
                f"regression output {self.output_names[self.prediction_output]!r} has shape {list(pred.shape)} "
                "for one row; expected [N, 1] or [N]"
            )
        feeds = self.dummy_feeds(1)
        times: list[float] = []
        deadline = time.perf_counter() + 1.0
        for _ in range(50):
            t0 = time.perf_counter()
            self.run(feeds)
            t1 = time.perf_counter()
            times.append(t1 - t0)
            if t1 > deadline:
                break
        self.single_row_s = statistics.median(times)
        log.info(
            "model %s version %s ready: provider=%s threads=%d layout=%s batchable=%s single-row run %.3f ms",
            self.name,
            self.version,
            self.provider,
            self.threads,
            self.layout,
            self.batchable,
            self.single_row_s * 1e3,
        )

    # --- running ------------------------------------------------------------------------------------------

    def run(self, feeds: Feeds) -> Outputs:
        """One session.run over all outputs; ORT's argument errors become 4xx, anything else a 500."""
        try:
            outputs: Outputs = self._run(self.output_names, feeds, None)
            return outputs
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as e:
            raise InvalidInputError(f"the model rejected the inputs: {e}") from e
        except Exception as e:
            raise InferenceError(f"model execution failed: {e}") from e

    # --- interpreting outputs -------------------------------------------------------------------------------

    def predictions(self, outputs: Outputs) -> npt.NDArray[Any]:
        """Per-row prediction: class index (classification) or value (regression), shape [N]."""
        pred = outputs[self.prediction_output]
        if self.task == "classification":
            return np.asarray(pred.argmax(axis=1))
        return pred.reshape(-1)

    def feature_columns(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Per-feature 1-D columns out of model feeds (for prediction logging)."""
        cols: dict[str, np.ndarray] = {}
        for f in self.features:
            arr = feeds[f.input.name]
            cols[f.name] = arr[:, f.column] if self.layout == "packed" else arr.reshape(-1)
        return cols

    def describe(self) -> dict[str, Any]:
        md = self.metadata
        return {
            "name": self.name,
            "version": self.version,
            "task": md.task,
            "features": [f.model_dump() for f in md.features],
            "classes": self.classes,
            "target": md.target,
            "model_name": md.model_name,
            "model_version": md.model_version,
            "mlflow_run_id": md.mlflow_run_id,
            "trained_at": md.trained_at,
            "layout": self.layout,
            "inputs": [i.as_oip() for i in self.inputs],
            "outputs": [o.as_oip() for o in self.outputs],
            "provider": self.provider,
        }
