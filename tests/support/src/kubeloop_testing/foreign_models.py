"""ONNX models Kubeloop did not train ("foreign": no ``kubeloop.*`` metadata_props), for the server's
tests and benchmarks, each with a function that makes valid inputs for it.

* :func:`packed_mlp` — an exported-PyTorch-style MLP: one ``float32 [N, F]`` input ``input``, Gemm/Relu
  layers and a Softmax whose output is named plainly ``output`` (nothing says it is a probability);
* :func:`multi_io_graph` — two inputs (``dense`` float32 ``[N, 4]`` and ``category_id`` int64 ``[N]``)
  and three outputs (``embedding`` float32 ``[N, 3]``, ``score`` float32 ``[N, 1]``, ``best`` int64
  ``[N]``);
* :func:`sklearn_pipeline` — a scikit-learn pipeline (scaling and one-hot encoding in a ColumnTransformer,
  then logistic regression) trained on scikit-learn's bundled iris table plus a generated string column,
  converted with skl2onnx: one ``[N, 1]`` input per column (three float, one string), outputs
  ``output_label`` (int64 ``[N]``) and ``output_probability`` (a ZipMap: a sequence of maps);
* :func:`string_graph` — string inputs only (``word`` and ``tag``, ``[N, 1]``) through LabelEncoders;
* :func:`image_graph` — an image-like ``float32 [N, 3, 4, 4]`` input (nothing the prediction log can hold);
* :func:`int_feature_graph` — per-feature inputs, one of them int64 (``age``, ``income``);
* :func:`identity_graph` — one ``[N, width]`` input ``x`` of any element type, returned as ``y``.

:func:`ort_outputs` runs a model with plain in-process onnxruntime, ZipMaps turned into ``[N, C]``
arrays the way the server serves them.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


def _finish(graph: Any, opset: int = 17, ml: bool = False) -> bytes:
    import onnx
    from onnx import helper

    opsets = [helper.make_opsetid("", opset)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", 2))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="kubeloop-tests-foreign")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def packed_mlp(
    n_features: int = 8, hidden: int = 16, n_out: int = 3, seed: int = 0, opset: int = 17
) -> bytes:
    """``input`` float32 [N, n_features] -> Gemm, Relu, Gemm, Softmax -> ``output`` float32 [N, n_out]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.normal(0, 1, (n_features, hidden)) / np.sqrt(n_features)).astype(np.float32)
    b1 = rng.normal(0, 0.1, hidden).astype(np.float32)
    w2 = (rng.normal(0, 1, (hidden, n_out)) / np.sqrt(hidden)).astype(np.float32)
    b2 = rng.normal(0, 0.1, n_out).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output"], axis=1),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    graph = helper.make_graph(
        nodes,
        "foreign_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n_out])],
        initializer=inits,
    )
    return _finish(graph, opset)


def packed_mlp_inputs(n: int, n_features: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).normal(0, 1.5, (n, n_features)).astype(np.float32)}


def multi_io_graph(seed: int = 0) -> bytes:
    """Two inputs (one int64), three outputs (one int64); see the module docstring."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (5, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, 3).astype(np.float32)
    nodes = [
        helper.make_node("Unsqueeze", ["category_id", "axis1"], ["cat_col"]),
        helper.make_node("Cast", ["cat_col"], ["cat_f"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["dense", "cat_f"], ["x"], axis=1),
        helper.make_node("Gemm", ["x", "w", "b"], ["embedding"]),
        helper.make_node("ReduceSum", ["embedding", "axis1"], ["score"], keepdims=1),
        helper.make_node("ArgMax", ["embedding"], ["best"], axis=1, keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    graph = helper.make_graph(
        nodes,
        "foreign_multi_io",
        [
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("category_id", TensorProto.INT64, ["N"]),
        ],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("best", TensorProto.INT64, ["N"]),
        ],
        initializer=inits,
    )
    return _finish(graph, 18)


def multi_io_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense": rng.normal(0, 1, (n, 4)).astype(np.float32),
        "category_id": rng.integers(-3, 50, n).astype(np.int64),
    }


SKLEARN_NUMERIC = ("sepal_length", "sepal_width", "petal_length")
SKLEARN_COLORS = ("red", "green", "blue")


@functools.cache  # training and conversion take seconds; the bytes are immutable
def sklearn_pipeline(seed: int = 0) -> bytes:
    """A scikit-learn pipeline converted to ONNX with skl2onnx (see the module docstring)."""
    import pandas as pd
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    iris = load_iris()
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(iris.data[:, :3].astype(np.float32), columns=list(SKLEARN_NUMERIC))
    frame["color"] = rng.choice(SKLEARN_COLORS, len(frame))
    pipe = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), list(SKLEARN_NUMERIC)),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["color"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    )
    pipe.fit(frame, iris.target)
    types = [(c, FloatTensorType([None, 1])) for c in SKLEARN_NUMERIC] + [
        ("color", StringTensorType([None, 1]))
    ]
    onx = to_onnx(pipe, initial_types=types, target_opset={"": 17, "ai.onnx.ml": 3})
    return bytes(onx.SerializeToString())


def sklearn_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {
        c: rng.uniform(lo, hi, (n, 1)).astype(np.float32)
        for c, (lo, hi) in zip(SKLEARN_NUMERIC, ((4.3, 7.9), (2.0, 4.4), (1.0, 6.9)), strict=True)
    }
    feeds["color"] = rng.choice([*SKLEARN_COLORS, "purple"], (n, 1)).astype(object)
    return feeds


def string_graph() -> bytes:
    """``word`` and ``tag`` string [N, 1] -> LabelEncoder codes -> ``code_sum`` float32 [N, 1] and the
    string ``tag_upper`` echo via a second LabelEncoder (string -> string)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node(
            "LabelEncoder", ["word"], ["word_code"], domain="ai.onnx.ml",
            keys_strings=["alpha", "beta", "gamma", "ünïcode"], values_floats=[1.0, 2.0, 3.0, 4.0],
            default_float=-1.0,
        ),
        helper.make_node(
            "LabelEncoder", ["tag"], ["tag_code"], domain="ai.onnx.ml",
            keys_strings=["x", "y"], values_floats=[10.0, 20.0], default_float=0.0,
        ),
        helper.make_node("Add", ["word_code", "tag_code"], ["code_sum"]),
        helper.make_node(
            "LabelEncoder", ["tag"], ["tag_upper"], domain="ai.onnx.ml",
            keys_strings=["x", "y"], values_strings=["X", "Y"], default_string="?",
        ),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "foreign_strings",
        [
            helper.make_tensor_value_info("word", TensorProto.STRING, ["N", 1]),
            helper.make_tensor_value_info("tag", TensorProto.STRING, ["N", 1]),
        ],
        [
            helper.make_tensor_value_info("code_sum", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("tag_upper", TensorProto.STRING, ["N", 1]),
        ],
    )
    return _finish(graph, 17, ml=True)


def string_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "word": rng.choice(["alpha", "beta", "gamma", "ünïcode", "other", ""], (n, 1)).astype(object),
        "tag": rng.choice(["x", "y", "z"], (n, 1)).astype(object),
    }


def ort_outputs(model: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of plain in-process onnxruntime, by name; a ZipMap (list of dicts) as [N, C]."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out: dict[str, np.ndarray] = {}
    for name, value in zip(names, session.run(names, feeds), strict=True):
        if isinstance(value, list):
            value = np.array([list(d.values()) for d in value], dtype=np.float32)
        out[name] = np.asarray(value)
    return out


def image_graph() -> bytes:
    """``pixels`` float32 [N, 3, 4, 4] (an image: no columns to log) -> ReduceMean -> ``brightness`` [N, 1]."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["pixels", "axes"], ["brightness"], keepdims=0)]
    graph = helper.make_graph(
        nodes,
        "foreign_image",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("brightness", TensorProto.FLOAT, ["N"])],
        initializer=[numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes")],
    )
    return _finish(graph, 18)


def int_feature_graph() -> bytes:
    """Per-feature inputs ``age`` int64 [N, 1] and ``income`` float32 [N, 1] -> ``value`` float32 [N, 1]
    (0.5 * age + income / 1000)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Cast", ["age"], ["age_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["age_f", "half"], ["a"]),
        helper.make_node("Div", ["income", "thousand"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["value"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half"),
        numpy_helper.from_array(np.array([1000.0], dtype=np.float32), "thousand"),
    ]
    graph = helper.make_graph(
        nodes,
        "foreign_int_features",
        [
            helper.make_tensor_value_info("age", TensorProto.INT64, ["N", 1]),
            helper.make_tensor_value_info("income", TensorProto.FLOAT, ["N", 1]),
        ],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    return _finish(graph, 17)


def identity_graph(elem: int, width: int | None = 4) -> bytes:
    """``x`` [N, width] (``elem``: an ``onnx.TensorProto`` element type; width None: any) -> Identity -> ``y``."""
    from onnx import helper

    x = helper.make_tensor_value_info("x", elem, [None, width])
    y = helper.make_tensor_value_info("y", elem, [None, width])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    return _finish(graph)
