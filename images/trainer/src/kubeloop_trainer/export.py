"""ONNX export: the torch model plus an input front-end, so a server feeds raw feature values.

Graph interface (recorded in ``metadata_props`` as :class:`kubeloop.contracts.ModelMetadata`):

* **inputs**: one per feature, named exactly like the feature, in ``ModelMetadata.features`` order,
  shape ``[N, 1]`` (``N`` dynamic):
  - numeric features: ``float32``; ``NaN`` means missing (imputed with the training median, then
    standardised with the training mean and standard deviation);
  - categorical features: ``string`` in the canonical form of :func:`kubeloop.drift.category_key`
    (``"3"`` for 3 and 3.0, ``"True"``/``"False"`` for booleans); ``""`` means missing (imputed with
    the training mode); a category not seen in training encodes as all zeros.
* **outputs**:
  - classification: ``probabilities`` ``float32 [N, C]`` in ``ModelMetadata.classes`` order, and
    ``label`` ``string [N]`` (the most probable class);
  - regression: ``prediction`` ``float32 [N, 1]`` in target units.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from kubeloop.contracts import ModelMetadata
from kubeloop_trainer.data import MODEL_OUTPUTS, Dataset
from kubeloop_trainer.errors import ExportError
from kubeloop_trainer.model import InferenceHead

OPSET = 20
IR_VERSION = 10  # what onnxruntime >= 1.20 loads
_PREFIX = "kubeloop"  # of internal tensor names; made unique against the feature names (internal_prefix)


def internal_prefix(feature_names: list[str]) -> str:
    """``kubeloop/``, or ``kubeloop_/``, ``kubeloop__/``, ...: the first that no feature name starts with,
    so no internal tensor name (all start with it) is a feature's input name."""
    prefix = _PREFIX + "/"
    while any(name.startswith(prefix) for name in feature_names):
        prefix = prefix[:-1] + "_/"
    return prefix


def _rename(graph: onnx.GraphProto, prefix: str) -> None:
    """Put ``prefix`` before every tensor and node name of the torch graph: its weights and node outputs
    are named after the module's attributes (``model.net.0.weight``), which a column may be named too."""
    for node in graph.node:
        node.input[:] = [prefix + n if n else n for n in node.input]
        node.output[:] = [prefix + n if n else n for n in node.output]
        if node.name:
            node.name = prefix + node.name
    for init in graph.initializer:
        init.name = prefix + init.name


def export_onnx(head: InferenceHead, ds: Dataset, metadata: ModelMetadata) -> onnx.ModelProto:
    """The complete inference graph with ``metadata`` in ``metadata_props``."""
    enc = ds.encoder
    clash = sorted({f.name for f in enc.features} & set(MODEL_OUTPUTS[ds.task]))
    if clash:  # refused by prepare() before training
        raise ExportError(f"feature name(s) {', '.join(clash)} clash with the ONNX output names")
    p = internal_prefix([f.name for f in enc.features])
    core_x, core_out = p + "core/x", p + "core/out"  # the torch graph's, renamed (_rename)
    head = head.eval()
    sample = torch.from_numpy(ds.x_val[: min(8, len(ds.x_val))].copy())
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                head,
                (sample,),
                # The stub says a path, but this (TorchScript) exporter writes to any binary file object.
                buf,  # type: ignore[arg-type]
                input_names=["x"],
                output_names=["out"],
                dynamic_axes={"x": {0: "N"}, "out": {0: "N"}},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed: {e}") from e
    core = onnx.load_from_string(buf.getvalue())
    _rename(core.graph, p + "core/")

    inputs: list[onnx.ValueInfoProto] = []
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    parts: dict[str, str] = {}
    for s in enc.numeric:
        inputs.append(helper.make_tensor_value_info(s.name, TensorProto.FLOAT, ["N", 1]))
        parts[s.name] = s.name
    if enc.categorical:
        inits.append(numpy_helper.from_array(np.array([""], dtype=object), p + "empty"))
    for i, c in enumerate(enc.categorical):
        inputs.append(helper.make_tensor_value_info(c.name, TensorProto.STRING, ["N", 1]))
        pre = f"{p}cat{i}/"
        inits.append(numpy_helper.from_array(np.array([c.mode], dtype=object), pre + "mode"))
        inits.append(numpy_helper.from_array(np.array(c.categories, dtype=object), pre + "categories"))
        nodes += [
            helper.make_node("Equal", [c.name, p + "empty"], [pre + "missing"]),
            helper.make_node("Where", [pre + "missing", pre + "mode", c.name], [pre + "imputed"]),
            helper.make_node("Equal", [pre + "imputed", pre + "categories"], [pre + "hit"]),
            helper.make_node("Cast", [pre + "hit"], [pre + "onehot"], to=TensorProto.FLOAT),
        ]
        parts[c.name] = pre + "onehot"
    order = [s.name for s in enc.numeric] + [c.name for c in enc.categorical]
    nodes.append(helper.make_node("Concat", [parts[n] for n in order], [core_x], axis=1))
    nodes += list(core.graph.node)
    inits += list(core.graph.initializer)

    outputs: list[onnx.ValueInfoProto] = []
    if ds.task == "classification":
        inits.append(numpy_helper.from_array(np.array(ds.classes, dtype=object), p + "classes"))
        nodes += [
            helper.make_node("Identity", [core_out], ["probabilities"]),
            helper.make_node("ArgMax", ["probabilities"], [p + "argmax"], axis=1, keepdims=0),
            helper.make_node("Gather", [p + "classes", p + "argmax"], ["label"], axis=0),
        ]
        outputs += [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(ds.classes)]),
            helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", [core_out], ["prediction"]))
        outputs.append(helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1]))

    # inputs in the feature order of the table (ModelMetadata.features)
    by_name = {v.name: v for v in inputs}
    graph = helper.make_graph(
        nodes, "kubeloop", [by_name[f.name] for f in enc.features], outputs, initializer=inits
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="kubeloop-trainer",
    )
    set_metadata(model, metadata)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"the exported ONNX graph is invalid: {e}") from e
    return model


def set_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    del model.metadata_props[:]
    for k, v in metadata.to_props().items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))


def onnx_feed(ds: Dataset, raw: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    """Raw columns as the graph's inputs (``[N, 1]`` float32 or string)."""
    feed: dict[str, np.ndarray[Any, Any]] = {}
    for f in ds.encoder.features:
        v = raw[f.name]
        if f.type == "numeric":
            feed[f.name] = v.astype(np.float32).reshape(-1, 1)
        else:
            feed[f.name] = np.array(["" if x is None else x for x in v], dtype=object).reshape(-1, 1)
    return feed


def verify(model_bytes: bytes, head: InferenceHead, ds: Dataset, tolerance: float) -> float:
    """Run the graph in onnxruntime on the raw validation rows and compare with torch.

    Also runs a batch of one row (dynamic batch). Returns the largest absolute difference. Raises
    ExportError when a difference exceeds ``tolerance * max(1, |torch value|)`` (absolute for
    probabilities and small predictions, relative for predictions in large target units, where
    float32 itself cannot resolve 1e-4) or when the predicted labels disagree with torch.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        feed = onnx_feed(ds, ds.raw_val)
        got = sess.run(None, feed)
        one = sess.run(None, {k: v[:1] for k, v in feed.items()})
    except Exception as e:
        raise ExportError(f"onnxruntime cannot run the exported model: {e}") from e
    with torch.no_grad():
        want = head.eval()(torch.from_numpy(ds.x_val)).numpy()
    if got[0].shape != want.shape or one[0].shape != (1, *want.shape[1:]):
        raise ExportError(f"ONNX output shape {got[0].shape} differs from torch's {want.shape}")
    err = np.abs(got[0] - want)
    err_one = np.abs(one[0] - want[:1])
    diff = float(max(err.max(), err_one.max()))
    allowed = tolerance * np.maximum(1.0, np.abs(want))
    if not (np.all(err <= allowed) and np.all(err_one <= allowed[:1])):
        raise ExportError(f"ONNX output differs from torch by {diff:.3g} (> {tolerance:g})")
    if ds.task == "classification":
        labels = np.array(ds.classes, dtype=object)[want.argmax(axis=1)]
        agree = got[1] == labels
        # ties within the tolerance may break differently
        if not bool(
            np.all(agree | (np.sort(want, axis=1)[:, -1] - np.sort(want, axis=1)[:, -2] <= tolerance))
        ):
            raise ExportError("ONNX labels differ from torch's")
    return diff
