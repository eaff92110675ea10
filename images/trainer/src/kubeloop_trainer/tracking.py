"""MLflow: one run per TrainingJob run, per-epoch metrics, registration and alias promotion.

Only rank 0 talks to MLflow. The tracking URI comes from ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from kubeloop_trainer.errors import ConfigError, TrackingError
from kubeloop_trainer.metrics import better, clears

log = logging.getLogger(__name__)

ARTIFACT_DIR = "model"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif v is not None:
            out[key] = str(v)[:6000]
    return out


class Tracker:
    def __init__(self) -> None:
        from mlflow.tracking import MlflowClient

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            log.warning("MLFLOW_TRACKING_URI is not set: MLflow records into ./mlruns inside the pod")
        # Explicit URIs: the environment is the trainer's contract, and MLflow's process-wide
        # default (mlflow.set_tracking_uri by an embedding caller) must not redirect our run.
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        self.client = MlflowClient(
            tracking_uri=tracking_uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
        )
        self.run_id = ""

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TrackingError(f"MLflow: cannot {what}: {msg}") from e

    def start(
        self, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, str], run_id: str = ""
    ) -> str:
        """Create the run (or continue ``run_id`` after a restart)."""
        if run_id:
            self._call("reopen the run", self.client.update_run, run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        exp = self._call("read the experiment", self.client.get_experiment_by_name, experiment)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(experiment)
            except Exception:  # created concurrently
                exp = self._call("read the experiment", self.client.get_experiment_by_name, experiment)
                exp_id = exp.experiment_id
        elif getattr(exp, "lifecycle_stage", "active") == "deleted":
            # it keeps its name until `mlflow gc` and takes no runs; restoring it would bring back the
            # runs someone deleted with it
            raise ConfigError(
                f"the MLflow experiment {experiment!r} is deleted (its name stays taken until mlflow gc): "
                "restore it in MLflow, or name another in spec.mlflow.experiment"
            )
        else:
            exp_id = exp.experiment_id
        run = self._call("create a run", self.client.create_run, exp_id, tags=tags, run_name=run_name)
        self.run_id = run.info.run_id
        self.log_params(params)
        return self.run_id

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self._call("log parameters", self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        self._call("log metrics", self.client.log_batch, self.run_id, metrics=items)

    def log_onnx_model(
        self, model: Any, example: Mapping[str, Any], extras: Mapping[str, bytes] | None = None
    ) -> None:
        """The run's ``model`` directory as a real MLflow model: the ONNX flavor (MLmodel, model.onnx),
        a tensor signature of the graph's inputs and outputs, ``example`` (a feed dict of a few rows)
        as its input example, and ``extras`` (the drift baseline, the torch weights) beside it. The
        registered version's source is this directory, so ``mlflow.pyfunc.load_model(
        "models:/<name>@<alias>")`` loads it and predicts from a feed dict like ``example``."""
        import tempfile
        from pathlib import Path

        import mlflow.onnx
        import onnx
        import onnxruntime as ort
        from mlflow.models import Model, infer_signature

        feed = dict(example)
        try:
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))
            signature = infer_signature(feed, outputs)
        except Exception as e:
            raise TrackingError(f"MLflow: cannot describe the model's signature: {e}") from e
        # Pinned requirements: MLflow would otherwise inspect the environment to guess them.
        requirements = [f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__.split('+')[0]}"]
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / ARTIFACT_DIR
            self._call(
                "save the MLflow model",
                mlflow.onnx.save_model,
                model,
                str(path),
                signature=signature,
                input_example=feed,
                pip_requirements=requirements,
                mlflow_model=Model(run_id=self.run_id, artifact_path=ARTIFACT_DIR),
                save_as_external_data=False,
            )
            for name, data in (extras or {}).items():
                (path / name).write_bytes(data)
            self._call("upload the model", self.client.log_artifacts, self.run_id, str(path), ARTIFACT_DIR)

    def end(self, ok: bool) -> None:
        if self.run_id:
            try:
                self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")
            except Exception as e:  # the result is already recorded; do not fail the run for this
                log.warning("MLflow: cannot close run %s: %s", self.run_id, e)

    # --- registry --------------------------------------------------------------------------------

    def register(self, name: str, tags: dict[str, str]) -> int:
        """A new version of ``name`` whose source is the run's ``model`` artifact directory."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise TrackingError(f"MLflow: cannot create registered model {name!r}: {e.message}") from e
        source = f"runs:/{self.run_id}/{ARTIFACT_DIR}"
        mv = self._call(
            "create a model version",
            self.client.create_model_version,
            name,
            source,
            run_id=self.run_id,
            tags=tags,
        )
        return int(mv.version)

    def versions_tagged(self, name: str, tag: str, value: str) -> list[Any]:
        """The versions of ``name`` whose ``tag`` is ``value``, oldest first ([] if ``name`` is absent)."""
        query = f"name='{name}' and tags.`{tag}` = '{value}'"
        found = self._call("search the model versions", self.client.search_model_versions, query)
        return sorted(found, key=lambda mv: int(mv.version))

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of each metric of ``run_id`` ({} where the run no longer exists)."""
        run = self._run_or_none(run_id)
        return {} if run is None else {k: float(v) for k, v in run.data.metrics.items()}

    def tag_version(self, name: str, version: int, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call("tag the model version", self.client.set_model_version_tag, name, str(version), k, v)

    def delete_version(self, name: str, version: int) -> None:
        try:
            self.client.delete_model_version(name, str(version))
        except Exception as e:
            log.warning("MLflow: cannot roll back version %s of %s: %s", version, name, e)

    def promote(
        self,
        name: str,
        version: int,
        alias: str,
        metric: str,
        value: float,
        threshold: float | None,
        require_improvement: bool,
    ) -> tuple[bool, str]:
        """Move ``alias`` to ``version`` if it clears ``threshold`` and, if required, beats the holder
        (a holder without a value of ``metric``, or with NaN, is beaten)."""
        if not math.isfinite(value):
            return False, f"{metric} has no value for this version"
        if threshold is not None and not clears(metric, value, threshold):
            return False, f"{metric}={value:.4g} does not reach the threshold {threshold:g}"
        if require_improvement:
            try:
                holder = self.client.get_model_version_by_alias(name, alias)
            except Exception:
                holder = None
            if holder is not None and str(holder.version) == str(version):
                # a retried pod whose earlier attempt moved the alias: a version need not beat itself
                return True, f"alias {alias!r} already points at version {version}"
            if holder is not None and holder.run_id:
                run = self._run_or_none(holder.run_id)
                old = None if run is None else run.data.metrics.get(metric)
                if old is not None and not math.isnan(float(old)) and not better(metric, value, float(old)):
                    return False, f"{metric}={value:.4g} does not beat version {holder.version} ({old:.4g})"
        self._call("set the alias", self.client.set_registered_model_alias, name, alias, str(version))
        return True, f"alias {alias!r} now points at version {version}"

    def _run_or_none(self, run_id: str) -> Any:
        """The run (of the alias holder, of a reused version), or None where it no longer exists
        (deleted for good, ``mlflow gc``): then it has no value to beat. Any other failure is a
        TrackingError."""
        from mlflow.exceptions import MlflowException

        def get() -> Any:
            try:
                return self.client.get_run(run_id)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning("MLflow: run %s no longer exists: %s", run_id, e.message)
                return None

        return self._call(f"read run {run_id}", get)
