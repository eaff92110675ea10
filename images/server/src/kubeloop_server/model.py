"""The model runtime: one ONNX Runtime session, created once, plus what the graph and its metadata say
about inputs and outputs.

Two kinds of model are served:

* ``kubeloop`` — a graph with Kubeloop's ``metadata_props`` (:class:`~kubeloop.contracts.ModelMetadata`:
  features, task, classes). Its inputs are read in one of two layouts, and a layout that does not fit
  the metadata fails the start-up:

  - ``per_feature`` — one graph input per feature, ``float32 [N, 1]`` (or ``[N]``) for numeric and
    ``string [N, 1]`` (or ``[N]``) for categorical features; matched by name, else by position;
  - ``packed`` — a single ``float32 [N, F]`` input holding every feature (all-numeric models).

  Classification graphs produce a probabilities output ``[N, C]`` mapped to ``classes``; regression
  graphs a ``[N, 1]`` or ``[N]`` output.

* ``onnx`` — any other ONNX graph ("foreign": a scikit-learn model converted with skl2onnx, an exported
  PyTorch model, a hand-built graph). OIP serves it as the graph declares it (every input and output,
  datatypes mapped, dynamic dimensions honoured; ZipMap outputs, a sequence of maps, become an
  ``[N, C]`` tensor in key order). The record API (``/forward``) works when the inputs read as named
  features — one ``[N, 1]``/``[N]`` input per feature (named after the input), or a single numeric
  ``[N, F]`` input with F fixed by the graph (features ``<input>_0`` .. ``<input>_<F-1>``) — and is
  refused with the reason otherwise (:attr:`ModelRuntime.record_api_error`). Its prediction is read
  from the outputs where they say what it is: a ZipMap or a float output named ``*prob*`` is a
  classification (classes: the ZipMap keys, else the column numbers), else a float output with one
  value per row is a regression, else there is none (the record API answers every output).
"""

from __future__ import annotations

import ctypes
import logging
import math
import statistics
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from kubeloop.contracts import FeatureSpec, ModelMetadata
from kubeloop.cpus import cpu_limit
from kubeloop_server.errors import (
    InferenceError,
    InvalidInputError,
    ModelLoadError,
    RecordApiUnavailableError,
)

log = logging.getLogger("kubeloop_server.model")

Feeds = dict[str, np.ndarray]
Outputs = list[np.ndarray]
Layout = Literal["per_feature", "packed"]
ModelKind = Literal["kubeloop", "onnx"]
Task = Literal["classification", "regression"]

KUBELOOP_PROPS_PREFIX: Final = "kubeloop."
# A foreign [N, F] input is logged as F columns only up to this width (wider inputs are images, embeddings).
MAX_LOGGED_COLUMNS: Final = 256

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
_ZIPMAP_VALUES: Final[dict[str, tuple[str, Any]]] = {
    "tensor(float)": ("FP32", np.float32),
    "float": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "double": ("FP64", np.float64),
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
    is_int: bool = False
    zipmap: bool = False  # an ONNX sequence of maps, served as an [N, C] tensor

    @classmethod
    def of(
        cls, name: str, datatype: str, shape: tuple[int, ...], dtype: Any, zipmap: bool = False
    ) -> TensorSpec:
        return cls(
            name,
            datatype,
            shape,
            dtype,
            datatype in ("FP32", "FP64", "FP16"),
            datatype == "BYTES",
            datatype.startswith(("INT", "UINT")),
            zipmap,
        )

    def as_oip(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class FeatureInput:
    """Where one feature goes in the graph (per-feature layout: its own input; packed: a column)."""

    name: str
    numeric: bool
    input: TensorSpec
    column: int  # packed layout: column in the [N, F] input; per-feature: 0
    integer: bool = False  # the graph input is an integer tensor: values must be whole numbers


@dataclass(frozen=True, slots=True)
class LogColumn:
    """One column of the prediction log: a whole ``[N]``/``[N, 1]`` input or one column of ``[N, F]``."""

    name: str
    input: str
    column: int | None  # None: the whole input
    numeric: bool


def _tensor_spec(arg: Any, output: bool = False) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    t = arg.type
    if t in _ORT_TYPES:
        datatype, dtype = _ORT_TYPES[t]
        return TensorSpec.of(arg.name, datatype, shape, dtype)
    if output and t.startswith("seq(map(") and t.endswith("))"):
        value = t[len("seq(map(") : -2].split(",", 1)[-1].strip()
        if value in _ZIPMAP_VALUES:
            datatype, dtype = _ZIPMAP_VALUES[value]
            return TensorSpec.of(arg.name, datatype, (-1, -1), dtype, zipmap=True)
    where = "output" if output else "input"
    raise ModelLoadError(
        f"graph {where} {arg.name!r} has type {t}, which the Open Inference Protocol cannot carry "
        "(tensors, and sequences of maps to float for outputs, are supported)"
    )


def _zipmap_array(seq: Any, dtype: Any, width: int) -> np.ndarray:
    """A ZipMap output (a list of {class: probability} dicts, keys in class order) as an [N, C] array."""
    if not seq:
        return np.zeros((0, width), dtype=dtype)
    return np.array([list(d.values()) for d in seq], dtype=dtype)


# nonfinite_rows() squares values: finite ones past the type's range overflow, and then the exact test decides.
warnings.filterwarnings("ignore", "overflow encountered in dot", RuntimeWarning, r"kubeloop_server\.model$")


def nonfinite_rows(values: np.ndarray) -> npt.NDArray[np.bool_] | None:
    """Which rows (first axis) of a float array hold a NaN or an infinity; None when none does. The usual
    case costs one dot product (a NaN or an infinity makes it NaN or inf; cheaper than a sum); the exact test
    runs only when it is not finite, which finite values overflowing make it too."""
    flat = values.reshape(-1)
    if math.isfinite(flat.dot(flat)):
        return None
    bad: npt.NDArray[np.bool_] = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
    return bad if bad.any() else None


CUDA_PROVIDER_OPTIONS: dict[str, str] = {"use_tf32": "0"}


def gpu_present() -> bool:
    """A CUDA driver is loadable (cheap; avoids ORT's noisy failure when there is no GPU)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


class ModelRuntime:
    """An ONNX model ready to run: session, kind, metadata, input layout and output mapping."""

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
        self.kind: ModelKind = (
            "kubeloop" if any(k.startswith(KUBELOOP_PROPS_PREFIX) for k in props) else "onnx"
        )
        self.metadata: ModelMetadata | None = None
        if self.kind == "kubeloop":
            try:
                self.metadata = ModelMetadata.from_props(props)
            except ValueError as e:
                raise ModelLoadError(f"Kubeloop metadata_props are invalid: {e}") from e
        md = self.metadata
        self.name = name or (md.model_name if md else "") or "model"
        self.version = version or (md.model_version if md else "") or "1"
        self.inputs = [_tensor_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_tensor_spec(a, output=True) for a in self.session.get_outputs()]
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in self.outputs]
        self.input_index = {s.name: s for s in self.inputs}
        self._zipmaps = [i for i, o in enumerate(self.outputs) if o.zipmap]
        # The common request shape gets a short path in the codec: one float [N, F] input.
        ins = self.inputs
        self.single_float_input = (
            ins[0]
            if len(ins) == 1 and ins[0].is_float and len(ins[0].shape) == 2 and ins[0].shape[0] == -1
            else None
        )
        # Why the record API is refused (None: it works); set for foreign graphs that do not read as features.
        self.record_api_error: str | None = None
        self.layout: Layout | None
        if md is not None:
            self.layout, self.features = self._resolve_layout(md.features)
        else:
            self.layout, self.features, self.record_api_error = self._foreign_layout()
        self.feature_names = [f.name for f in self.features]
        self.feature_index = {f.name: f for f in self.features}
        self.all_numeric = all(f.numeric for f in self.features)
        self.task: Task | None = md.task if md else None
        self.classes: list[str] = list(md.classes) if md else []
        self.prediction_output: int | None = self._resolve_prediction_output() if md else None
        # Why the task is what it is (foreign graphs: read from the outputs).
        self.task_source = "Kubeloop metadata_props" if md else ""
        # The bound C++ run method skips the Python wrapper's per-call input-name checks (the codec has
        # already validated names, types and shapes); fall back to the public API if ORT ever moves it.
        inner = getattr(self.session, "_sess", None)
        self._run = inner.run if inner is not None else self.session.run
        # One RunOptions for every run: given None, the binding builds a default one per call (~2 us, a
        # tenth of a small model's run).
        self._run_options = ort.RunOptions()
        self.batchable = False
        self.row_outputs: list[bool] = []
        self.single_row_s = 0.0
        self._warm_up()
        self.log_columns, self.unlogged_inputs = self._log_columns()
        self.log_ready()

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
        # TF32 (ONNX Runtime's CUDA default on Ampere and later) rounds matmul inputs to 10 mantissa bits:
        # answers would differ from the CPU's, and from what the model was validated with, by ~1e-3.
        providers: list[str | tuple[str, dict[str, str]]] = (
            [("CUDAExecutionProvider", CUDA_PROVIDER_OPTIONS), "CPUExecutionProvider"]
            if use_cuda
            else ["CPUExecutionProvider"]
        )
        try:
            session = ort.InferenceSession(model_bytes, sess_options=so, providers=providers)
        except Exception as e:
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {e}") from e
        if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
            raise ModelLoadError("device=cuda but the CUDA execution provider failed to initialise")
        return session

    def _resolve_layout(self, feats: list[FeatureSpec]) -> tuple[Layout, list[FeatureInput]]:
        """A Kubeloop model's layout; a graph that does not fit its metadata fails the start-up."""
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
                out.append(FeatureInput(f.name, numeric, inp, 0, inp.is_int))
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

    def _foreign_layout(self) -> tuple[Layout | None, list[FeatureInput], str | None]:
        """Named features of a graph without Kubeloop metadata, or the reason why there are none."""
        ins = self.inputs

        def column_like(s: TensorSpec) -> bool:
            return len(s.shape) == 1 or (len(s.shape) == 2 and s.shape[1] == 1)

        def numeric(s: TensorSpec) -> bool:
            return s.is_float or s.is_int

        if ins and all(column_like(s) and (numeric(s) or s.is_string) for s in ins):
            return "per_feature", [FeatureInput(s.name, not s.is_string, s, 0, s.is_int) for s in ins], None
        if len(ins) == 1 and len(ins[0].shape) == 2 and ins[0].shape[1] > 0 and numeric(ins[0]):
            s = ins[0]
            feats = [FeatureInput(f"{s.name}_{j}", True, s, j, s.is_int) for j in range(s.shape[1])]
            return "packed", feats, None
        desc = ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in ins)
        return (
            None,
            [],
            f"the graph's inputs ({desc}) do not read as named features: the record API needs one [N, 1] "
            "(or [N]) numeric or string input per feature, or a single numeric [N, F] input with F fixed by "
            f"the graph; use OIP (/v2/models/{self.name} for its inputs, outputs and what the prediction log holds, "
            f"/v2/models/{self.name}/infer or gRPC ModelInfer for inference)",
        )

    def _resolve_prediction_output(self) -> int:
        """A Kubeloop model's prediction output (probabilities or the regression value)."""
        assert self.metadata is not None
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

    def _foreign_prediction(self, one: Outputs) -> None:
        """Read a foreign graph's task from its outputs (see the module docstring); only an output with one
        entry per row can be the prediction."""
        for i, o in enumerate(self.outputs):
            arr = one[i]
            if (
                (o.zipmap or (o.is_float and "prob" in o.name.lower()))
                and arr.ndim == 2
                and self.row_outputs[i]
            ):
                self.task, self.prediction_output = "classification", i
                self.task_source = f"output {o.name!r} holds class probabilities"
                if o.zipmap:
                    self.classes = [str(k) for k in self._zipmap_keys[i]]
                    self.task_source += " (ZipMap: classes are its keys)"
                else:
                    self.classes = [str(c) for c in range(arr.shape[1])]
                    self.task_source += " (classes are its column numbers)"
                return
        for i, o in enumerate(self.outputs):
            if o.is_float and one[i].size == 1 and one[i].ndim in (1, 2) and self.row_outputs[i]:
                self.task, self.prediction_output = "regression", i
                self.task_source = f"output {o.name!r} has one float value per row"
                return
        self.task_source = "no output reads as class probabilities or one value per row"

    def dummy_feeds(self, n: int) -> Feeds:
        feeds: Feeds = {}
        width = len(self.features) if self.layout == "packed" else 1
        for inp in self.inputs:
            dims = [
                (n if d == -1 else d) if k == 0 else (width if d == -1 else d)
                for k, d in enumerate(inp.shape)
            ]
            shape = tuple(dims) or ()
            if inp.is_string:
                feeds[inp.name] = np.full(shape, "", dtype=np.object_)
            else:
                feeds[inp.name] = np.zeros(shape, dtype=inp.dtype)
        return feeds

    def _first_dim_dynamic(self) -> bool:
        return all(len(i.shape) >= 1 and i.shape[0] == -1 for i in self.inputs)

    def _warm_up(self) -> None:
        self._zipmap_keys: dict[int, list[Any]] = {}
        self._zipmap_width: dict[int, int] = {}
        try:
            raw_one = self._run(self.output_names, self.dummy_feeds(1), None)
            for i in self._zipmaps:
                seq = raw_one[i]
                keys = list(seq[0].keys()) if seq else []
                self._zipmap_keys[i] = keys
                self._zipmap_width[i] = len(keys)
                o = self.outputs[i]
                self.outputs[i] = replace(o, shape=(-1, len(keys)))
            one = self.run(self.dummy_feeds(1))
            two = self.run(self.dummy_feeds(2)) if self._first_dim_dynamic() else None
        except Exception as e:
            raise ModelLoadError(f"model failed a warm-up run on zero/empty inputs: {e}") from e
        # Outputs with one entry per row (the record API answers the others whole, in every row). Without a
        # second run to tell (a fixed batch dimension), any output with a first axis may be: the record API
        # then goes by its length.
        self.row_outputs = [
            a.ndim >= 1 and (two is None or (a.shape[0] == 1 and b.ndim >= 1 and b.shape[0] == 2))
            for a, b in zip(one, one if two is None else two, strict=True)
        ]
        self.batchable = two is not None and all(self.row_outputs)
        if self.metadata is None:
            self._foreign_prediction(one)
        else:
            self._check_kubeloop_outputs(one)
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

    def _check_kubeloop_outputs(self, one: Outputs) -> None:
        assert self.prediction_output is not None
        pred = one[self.prediction_output]
        name = self.output_names[self.prediction_output]
        if self.task == "classification":
            if pred.ndim != 2:
                raise ModelLoadError(
                    f"classification output {name!r} has shape {list(pred.shape)}; expected probabilities [N, C]"
                )
            if not self.classes:
                self.classes = [str(c) for c in range(pred.shape[1])]
            elif len(self.classes) != pred.shape[1]:
                raise ModelLoadError(
                    f"metadata lists {len(self.classes)} classes but output {name!r} has {pred.shape[1]} columns"
                )
        elif pred.size != 1:
            raise ModelLoadError(
                f"regression output {name!r} has shape {list(pred.shape)} for one row; expected [N, 1] or [N]"
            )

    def _log_columns(self) -> tuple[list[LogColumn], dict[str, str]]:
        """What the prediction log can hold: the features, else each input that reads as columns."""
        if self.features:
            cols = [
                LogColumn(f.name, f.input.name, f.column if self.layout == "packed" else None, f.numeric)
                for f in self.features
            ]
            return cols, {}
        cols = []
        unlogged: dict[str, str] = {}
        for s in self.inputs:
            if len(s.shape) == 1 or (len(s.shape) == 2 and s.shape[1] == 1):
                if s.is_string or s.is_float or s.is_int:
                    cols.append(LogColumn(s.name, s.name, None, not s.is_string))
                else:
                    unlogged[s.name] = f"{s.datatype} values are not logged"
            elif len(s.shape) == 2 and 0 < s.shape[1] <= MAX_LOGGED_COLUMNS and (s.is_float or s.is_int):
                cols += [LogColumn(f"{s.name}_{j}", s.name, j, True) for j in range(s.shape[1])]
            else:
                unlogged[s.name] = (
                    f"shape {list(s.shape)} {s.datatype} does not read as columns (logged: [N], [N, 1], or "
                    f"numeric [N, F] with F fixed and at most {MAX_LOGGED_COLUMNS})"
                )
        return cols, unlogged

    def log_ready(self) -> None:
        log.info(
            "model %s version %s ready: kind=%s (%s) provider=%s threads=%d layout=%s task=%s batchable=%s "
            "single-row run %.3f ms%s",
            self.name,
            self.version,
            self.kind,
            "Kubeloop metadata_props"
            if self.kind == "kubeloop"
            else "a plain ONNX graph, no Kubeloop metadata",
            self.provider,
            self.threads,
            self.layout,
            self.task,
            self.batchable,
            self.single_row_s * 1e3,
            f"; record API unavailable: {self.record_api_error}" if self.record_api_error else "",
        )

    # --- running ------------------------------------------------------------------------------------------

    def run(self, feeds: Feeds) -> Outputs:
        """One session.run over all outputs; ORT's argument errors become 4xx, anything else a 500."""
        try:
            outputs: Outputs = self._run(self.output_names, feeds, self._run_options)
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as e:
            raise InvalidInputError(f"the model rejected the inputs: {e}") from e
        except Exception as e:
            raise InferenceError(f"model execution failed: {e}") from e
        for i in self._zipmaps:
            outputs[i] = _zipmap_array(outputs[i], self.outputs[i].dtype, self._zipmap_width.get(i, 0))
        return outputs

    # --- interpreting outputs -------------------------------------------------------------------------------

    def predictions(self, outputs: Outputs) -> npt.NDArray[Any] | None:
        """Per-row prediction: class index (classification) or value (regression), shape [N]; None if the
        graph has no output that reads as a prediction."""
        if self.prediction_output is None:
            return None
        return self.prediction_values(outputs[self.prediction_output])

    def prediction_values(self, pred: np.ndarray) -> npt.NDArray[Any]:
        """Per-row prediction out of the prediction output's values (rows of any number of requests). A row of
        probabilities holding a NaN or an infinity has no class (:func:`nonfinite_rows`), although argmax
        gives it one."""
        if self.task == "classification":
            return np.asarray(pred.argmax(axis=1))
        return pred.reshape(-1)

    def log_values(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """The prediction log's 1-D columns out of model feeds."""
        cols: dict[str, np.ndarray] = {}
        for c in self.log_columns:
            arr = feeds[c.input]
            cols[c.name] = arr.reshape(-1) if c.column is None else arr[:, c.column]
        return cols

    def record_api_check(self) -> None:
        """Raise the reason why the record API does not fit this graph (nothing for readable graphs)."""
        if self.record_api_error is not None:
            raise RecordApiUnavailableError(self.record_api_error)

    def describe(self) -> dict[str, Any]:
        md = self.metadata
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "task": self.task,
            "task_source": self.task_source,
            "features": [
                {"name": f.name, "type": "numeric" if f.numeric else "categorical"} for f in self.features
            ],
            "classes": self.classes,
            "prediction_output": None
            if self.prediction_output is None
            else self.output_names[self.prediction_output],
            "record_api": {"available": self.record_api_error is None, "reason": self.record_api_error},
            "target": md.target if md else "",
            "model_name": md.model_name if md else "",
            "model_version": md.model_version if md else "",
            "mlflow_run_id": md.mlflow_run_id if md else "",
            "trained_at": md.trained_at if md else "",
            "layout": self.layout,
            "inputs": [i.as_oip() for i in self.inputs],
            "outputs": [o.as_oip() for o in self.outputs],
            "provider": self.provider,
        }
