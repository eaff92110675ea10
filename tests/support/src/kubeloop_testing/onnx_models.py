"""Small Kubeloop-format ONNX models for tests and benchmarks, and records that fit them.

The models follow the trainer's contract: preprocessing inside the graph (standard scaling; categories
encoded by an ``ai.onnx.ml.LabelEncoder``), ``metadata_props`` from :meth:`ModelMetadata.to_props`, and
either one input per feature (``float32 [N, 1]`` / ``string [N, 1]``) or one ``float32 [N, F]`` input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from kubeloop.contracts import FeatureSpec, ModelMetadata


def mlp_model(
    *,
    n_numeric: int = 30,
    categorical: Sequence[tuple[str, Sequence[str]]] = (),
    hidden: Sequence[int] = (64, 32),
    task: Literal["classification", "regression"] = "classification",
    classes: Sequence[str] = ("setosa", "versicolor", "virginica"),
    layout: Literal["packed", "per_feature"] = "packed",
    name: str = "tabular",
    version: str = "3",
    seed: int = 0,
    opset: int = 17,
) -> bytes:
    """An MLP over ``n_numeric`` numeric features ``f0..`` and the given categorical features.

    ``categorical`` is a list of ``(feature_name, known_categories)``; unknown categories map to -1.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if layout == "packed" and categorical:
        raise ValueError("the packed layout is for all-numeric models")
    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    inputs: list[Any] = []
    num_names = [f"f{i}" for i in range(n_numeric)]
    features = [FeatureSpec(name=n, type="numeric") for n in num_names]
    features += [FeatureSpec(name=n, type="categorical") for n, _ in categorical]

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    width = n_numeric + len(categorical)
    if layout == "packed":
        inputs.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_numeric]))
        x = "input"
    else:
        parts = []
        for n in num_names:
            inputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1]))
            parts.append(n)
        for n, cats in categorical:
            inputs.append(helper.make_tensor_value_info(n, TensorProto.STRING, ["N", 1]))
            nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [n],
                    [f"{n}_code"],
                    domain="ai.onnx.ml",
                    keys_strings=list(cats),
                    values_floats=[float(i) for i in range(len(cats))],
                    default_float=-1.0,
                )
            )
            parts.append(f"{n}_code")
        nodes.append(helper.make_node("Concat", parts, ["concat"], axis=1))
        x = "concat"
    # Standard scaling, as the trainer bakes it in.
    mean = rng.normal(0, 1, width).astype(np.float32)
    std = rng.uniform(0.5, 2.0, width).astype(np.float32)
    nodes.append(helper.make_node("Sub", [x, init("mean", mean)], ["centred"]))
    nodes.append(helper.make_node("Div", ["centred", init("std", std)], ["scaled"]))
    x = "scaled"
    dims = [width, *hidden]
    for k in range(len(hidden)):
        w = (rng.normal(0, 1, (dims[k], dims[k + 1])) / np.sqrt(dims[k])).astype(np.float32)
        b = rng.normal(0, 0.1, dims[k + 1]).astype(np.float32)
        nodes.append(helper.make_node("Gemm", [x, init(f"w{k}", w), init(f"b{k}", b)], [f"h{k}"]))
        nodes.append(helper.make_node("Relu", [f"h{k}"], [f"a{k}"]))
        x = f"a{k}"
    n_out = len(classes) if task == "classification" else 1
    w = (rng.normal(0, 1, (dims[-1], n_out)) / np.sqrt(dims[-1])).astype(np.float32)
    b = rng.normal(0, 0.1, n_out).astype(np.float32)
    if task == "classification":
        nodes.append(helper.make_node("Gemm", [x, init("wo", w), init("bo", b)], ["logits"]))
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_out])]
    else:
        nodes.append(helper.make_node("Gemm", [x, init("wo", w), init("bo", b)], ["prediction"]))
        outputs = [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])]
    graph = helper.make_graph(nodes, "kubeloop_mlp", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    if categorical:
        opsets.append(helper.make_opsetid("ai.onnx.ml", 2))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="kubeloop-tests")
    model.ir_version = 8
    md = ModelMetadata(
        features=features,
        task=task,
        classes=list(classes) if task == "classification" else [],
        model_name=name,
        model_version=version,
        mlflow_run_id="0123456789abcdef",
        trained_at="2026-11-22T00:00:00Z",
        target="label" if task == "classification" else "y",
    )
    onnx.helper.set_model_props(model, md.to_props())
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def random_records(
    n: int, *, n_numeric: int = 30, categorical: Sequence[tuple[str, Sequence[str]]] = (), seed: int = 0
) -> list[dict[str, Any]]:
    """Valid records for :func:`mlp_model` (categories drawn from the known ones plus an unseen one)."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    for _ in range(n):
        rec: dict[str, Any] = {f"f{i}": float(v) for i, v in enumerate(rng.normal(0, 2, n_numeric).round(4))}
        for name, cats in categorical:
            choices = [*cats, "never-seen"]
            rec[name] = choices[int(rng.integers(len(choices)))]
        out.append(rec)
    return out
