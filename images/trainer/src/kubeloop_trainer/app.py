"""One training run, end to end: data -> checks -> training -> metrics -> ONNX -> registry -> storage."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import signal
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import numpy as np
import torch

from kubeloop.contracts import (
    PROGRESS_EVENT_EPOCH,
    MlflowTags,
    ModelMetadata,
    TrainingSummary,
    checkpoint_prefix,
    model_baseline,
    model_onnx,
)
from kubeloop.cpus import cpu_limit
from kubeloop.resources import DeepSpeedSpec, TrainingJobSpec
from kubeloop.storage import ObjectStore, StorageError
from kubeloop_trainer import distributed
from kubeloop_trainer.baseline import baseline_json
from kubeloop_trainer.checkpoint import Checkpointer
from kubeloop_trainer.data import Dataset, data_fingerprint, prepare, read_tables, task_name
from kubeloop_trainer.distributed import DistContext
from kubeloop_trainer.errors import ConfigError, CudaGraphError
from kubeloop_trainer.export import export_onnx, onnx_feed, set_metadata, verify
from kubeloop_trainer.graphs import back_to_default_stream, graphs_wanted, use_own_stream
from kubeloop_trainer.loop import EpochResult, Loop, LoopConfig, LoopState, TorchEngine, best_model
from kubeloop_trainer.metrics import classification_metrics, regression_metrics
from kubeloop_trainer.model import InferenceHead, TabularMLP, build_model
from kubeloop_trainer.settings import TrainerSettings
from kubeloop_trainer.storage import make_store, read_dataset_parts
from kubeloop_trainer.tracking import Tracker, flatten

log = logging.getLogger("kubeloop_trainer")


def emit(event: dict[str, Any], out: TextIO | None = None) -> None:
    """One structured progress line (JSON) on stdout."""
    stream = out or sys.stdout
    stream.write(json.dumps(event, separators=(",", ":")) + "\n")
    stream.flush()


def configure_threads(settings: TrainerSettings, ctx: DistContext) -> int:
    """torch intra-op threads: the pod's CPU limit shared among the processes of this node."""
    n = settings.threads or max(1, cpu_limit() // max(1, ctx.local_world_size))
    torch.set_num_threads(n)
    return n


def load_dataset(spec: TrainingJobSpec, settings: TrainerSettings, store: ObjectStore | None) -> Dataset:
    parts = read_dataset_parts(spec.dataset.uri, store)
    df = read_tables(parts, spec.dataset.uri, spec.dataset.format)
    return prepare(
        df,
        spec.dataset,
        task_name(spec.task),
        spec.training.seed,
        min_rows=settings.min_rows,
        max_classes=settings.max_classes,
        max_categories=settings.max_categories,
    )


TORCH_ARTIFACT = "torch_model.pt"


def torch_artifact(model: torch.nn.Module, ds: Dataset) -> bytes:
    """The trained torch model (state dict + architecture), for reuse and for checking the ONNX."""
    if not isinstance(model, TabularMLP):
        raise TypeError(f"expected a TabularMLP, got {type(model).__name__}")
    linear = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    doc = {
        "config": {
            "n_numeric": model.n_numeric,
            "width": linear[0].in_features,
            "hidden": [m.out_features for m in linear[:-1]],
            "n_outputs": linear[-1].out_features,
            "task": ds.task,
            "target_mean": ds.target_mean,
            "target_std": ds.target_std,
        },
        "state_dict": model.state_dict(),
    }
    buf = io.BytesIO()
    torch.save(doc, buf)
    return buf.getvalue()


def load_torch_artifact(data: bytes) -> InferenceHead:
    """Rebuild the inference model from :func:`torch_artifact` bytes."""
    doc = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    c = doc["config"]
    model = TabularMLP(c["n_numeric"], c["width"], c["hidden"], c["n_outputs"], 0.0)
    model.load_state_dict(doc["state_dict"])
    return InferenceHead(model.eval(), c["task"], c["target_mean"], c["target_std"]).eval()


def train_targets(ds: Dataset, y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """What the loss sees: class indices, or the standardised regression target."""
    if ds.task == "classification":
        return y
    # in float64: a float32 target spanning +-3e38 overflows in y - mean
    return ((y.astype(np.float64) - ds.target_mean) / ds.target_std).astype(np.float32)


def final_metrics(head: InferenceHead, ds: Dataset) -> dict[str, float]:
    """The validation metrics that have a value: ROC-AUC of a validation split with one class is NaN,
    which the summary's JSON cannot carry (it became null, and the operator dropped the summary)."""
    with torch.no_grad():
        out = head.eval()(torch.from_numpy(ds.x_val)).numpy()
    if ds.task == "classification":
        metrics = classification_metrics(ds.y_val, out)
    else:
        metrics = regression_metrics(ds.y_val, out)
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def training_key(settings: TrainerSettings, spec: TrainingJobSpec) -> str:
    """One training: the TrainingJob (namespace, name, UID) and the spec its Job runs. Every retried
    pod of the Job has the same; a re-created TrainingJob (new UID) or another spec has another."""
    doc = [settings.namespace, settings.name, settings.uid, spec.model_dump(mode="json", by_alias=True)]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run(settings: TrainerSettings, ctx: DistContext | None = None) -> TrainingSummary | None:
    """Train, export and register; returns the summary on rank 0 and None on the other ranks."""
    spec = settings.training_spec()
    ctx = ctx or DistContext.from_env()
    if spec.model.image is not None:
        raise ConfigError("model.image: a bring-your-own image does not run the built-in trainer")
    configure_threads(settings, ctx)
    store = make_store(settings)
    if store is None:
        raise ConfigError(
            "no object store configured: set KUBELOOP_TRAINER_S3_ENDPOINT (or KUBELOOP_TRAINER_LOCAL_STORE)"
        )
    task = str(spec.task)
    model_name = spec.registry.model_name if spec.registry is not None else settings.name
    ckpt = Checkpointer(
        store,
        checkpoint_prefix(settings.namespace, settings.name, settings.bucket),
        settings.uid,
        ctx,
        settings.scratch_dir(),
    )
    done = ckpt.finished_summary()
    if done is not None:  # a restarted pod of a finished run: report, do not train again
        log.info("this TrainingJob already finished; reporting its summary")
        return TrainingSummary.model_validate_json(done) if ctx.is_main else None

    ds = load_dataset(spec, settings, store)  # every check runs before any training
    if ds.ignored_columns and ctx.is_main:
        log.warning(
            "temporal columns left out of the features (not model inputs): %s",
            ", ".join(f"{k} ({v})" for k, v in ds.ignored_columns.items()),
        )
        emit({"event": "ignored_columns", "columns": ds.ignored_columns, "why": "temporal"})
    log.info(
        "dataset %s: %d training and %d validation rows, %d features, task %s",
        spec.dataset.uri,
        len(ds.y_train),
        len(ds.y_val),
        len(ds.encoder.features),
        task,
    )

    seed = spec.training.seed
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    use_gpu = spec.distributed.gpus_per_node > 0 and torch.cuda.is_available()
    device = distributed.device_for(ctx, use_gpu)
    deepspeed = str(spec.distributed.backend) == "deepspeed"
    distributed.init_process_group(ctx, device, always=deepspeed)

    model = build_model(ds, spec.model.hidden_layers, spec.model.dropout)
    template = build_model(ds, spec.model.hidden_layers, spec.model.dropout)  # fp32, fitted buffers
    tr = spec.training
    ds_spec = spec.distributed.deepspeed or DeepSpeedSpec()
    graphs = graphs_wanted(
        settings.cuda_graphs, deepspeed, ds_spec.zero_stage, ds_spec.precision, device, ctx.world_size
    )
    if graphs and ckpt.graphs_refused():
        log.warning("an earlier attempt failed inside a CUDA graph capture: training without CUDA graphs")
        graphs = False
    own_stream = use_own_stream(device) if graphs else None  # from the engine's set-up on (graphs.py)
    engine: Any
    if deepspeed:
        from kubeloop_trainer.ds_engine import DeepSpeedEngine

        engine = DeepSpeedEngine(
            model,
            tr.learning_rate,
            ds_spec,
            tr.batch_size,
            ctx,
            device,
            allow_shm=settings.deepspeed_shm,
            capturable=graphs,
        )
    else:
        engine = TorchEngine(model, tr.learning_rate, ctx, device)

    state = LoopState()
    run_id = ""
    data_id = data_fingerprint(ds)
    meta = ckpt.load(data_id) if settings.checkpoint else None
    if meta is not None and meta.get("backend") == ("deepspeed" if deepspeed else "torch"):
        state = ckpt.restore_deepspeed(engine) if deepspeed else ckpt.restore_torch(meta, engine)
        run_id = str(meta.get("extra", {}).get("mlflow_run_id", ""))
        if ctx.is_main:
            emit({"event": "resumed", "epoch": state.epoch, "epochs": tr.epochs})

    tracker = Tracker() if ctx.is_main else None
    primary = "accuracy" if task == "classification" else "r2"
    if tracker is not None:
        params = flatten(
            spec.model_dump(
                mode="json",
                by_alias=True,
                exclude_none=True,
                include={"dataset", "task", "model", "training", "distributed"},
            )
        )
        params.update(
            {
                "worldSize": str(ctx.world_size),
                "rows.train": str(len(ds.y_train)),
                "rows.validation": str(len(ds.y_val)),
                "features": str(len(ds.encoder.features)),
            }
        )
        run_id = tracker.start(
            spec.mlflow.experiment or settings.namespace,
            settings.name,
            {
                MlflowTags.NAMESPACE: settings.namespace,
                MlflowTags.TRAININGJOB: settings.name,
                MlflowTags.UID: settings.uid,
            },
            params,
            run_id,
        )

    def on_epoch(r: EpochResult, st: LoopState) -> None:
        if settings.checkpoint:
            extra = {"mlflow_run_id": run_id, "data": data_id}
            if deepspeed:
                ckpt.save_deepspeed(engine, st, extra)
            else:
                ckpt.save_torch(engine, st, extra)
        if tracker is not None:
            tracker.log_metrics(
                {"train_loss": r.train_loss, "val_loss": r.val_loss, f"val_{primary}": r.val_metric},
                step=r.epoch,
            )
        if ctx.is_main:
            emit(
                {
                    "event": PROGRESS_EVENT_EPOCH,
                    "epoch": r.epoch,
                    "epochs": tr.epochs,
                    "train_loss": round(r.train_loss, 6),
                    "val_loss": round(r.val_loss, 6),
                    f"val_{primary}": round(r.val_metric, 6),
                    "seconds": round(r.seconds, 4),
                }
            )
        if settings.crash_after_epoch is not None and r.epoch >= settings.crash_after_epoch:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like an evicted pod

    loop = Loop(
        engine,
        LoopConfig(
            epochs=tr.epochs,
            batch_size=tr.batch_size,
            learning_rate=tr.learning_rate,
            seed=seed,
            task=task,
            early_stopping=tr.early_stopping.enabled,
            patience=tr.early_stopping.patience,
            min_delta=tr.early_stopping.min_delta,
        ),
        ctx,
        device,
        ds.x_train,
        train_targets(ds, ds.y_train),
        ds.x_val,
        train_targets(ds, ds.y_val),
        cuda_graphs=graphs,
    )
    try:
        state = loop.fit(state, on_epoch)
    except BaseException as e:
        if isinstance(e, CudaGraphError) and ctx.is_main:
            try:
                ckpt.refuse_graphs(e.message)
            except Exception as store_error:  # the failure itself is what the pod reports
                log.warning("could not note the failed CUDA graph capture: %s", store_error)
        if tracker is not None:
            tracker.end(False)
        raise
    finally:
        if own_stream is not None:
            with contextlib.suppress(RuntimeError):  # a CUDA error must not hide the run's own outcome
                back_to_default_stream(device, own_stream)
        distributed.shutdown()
    if loop.graphed is not None:
        g = loop.graphed
        log.info(
            "CUDA graph: %d training steps replayed from one captured graph%s",
            g.replays,
            " (capture refused; the other steps ran eagerly)" if g.eager else "",
        )
    if tracker is None:
        return None
    try:
        summary = _finish(settings, spec, ds, template, state, tracker, store, model_name)
    except BaseException:
        tracker.end(False)
        raise
    tracker.end(True)
    ckpt.mark_finished(summary.model_dump_json(by_alias=True))
    return summary


def _finish(
    settings: TrainerSettings,
    spec: TrainingJobSpec,
    ds: Dataset,
    template: TabularMLP,
    state: LoopState,
    tracker: Tracker,
    store: ObjectStore,
    model_name: str,
) -> TrainingSummary:
    """Rank 0: final metrics, ONNX export + check, registration, uploads, promotion."""
    best = best_model(template, state)
    head = InferenceHead(best, ds.task, ds.target_mean, ds.target_std)
    metrics = final_metrics(head, ds)
    key = training_key(settings, spec)
    earlier = _registered(tracker, store, model_name, key, settings.bucket)
    if earlier is not None:  # before logging: a resumed run keeps the metrics of the registered model
        return _finish_earlier(spec, tracker, model_name, earlier, metrics, settings.bucket)
    tracker.log_metrics({**metrics, "best_epoch": float(state.best_epoch), "epochs_run": float(state.epoch)})

    metadata = ModelMetadata(
        features=ds.encoder.features,
        task=ds.task,
        classes=ds.classes,
        model_name=model_name,
        mlflow_run_id=tracker.run_id,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        target=ds.target,
    )
    model = export_onnx(head, ds, metadata)
    diff = verify(model.SerializeToString(), head, ds, settings.onnx_tolerance)  # before registering
    log.info("ONNX export matches torch (max abs diff %.2g); registering %s", diff, model_name)

    bucket = settings.bucket
    version = tracker.register(
        model_name,
        {
            MlflowTags.NAMESPACE: settings.namespace,
            MlflowTags.TRAININGJOB: settings.name,
            MlflowTags.UID: settings.uid,
            MlflowTags.TRAINING_KEY: key,
        },
    )
    onnx_ref = model_onnx(model_name, version, bucket)
    baseline_ref = model_baseline(model_name, version, bucket)
    uploaded = []
    try:
        metadata.model_version = str(version)
        set_metadata(model, metadata)
        onnx_bytes = model.SerializeToString()
        max_diff = verify(onnx_bytes, head, ds, settings.onnx_tolerance)
        baseline = baseline_json(
            ds, {"model_name": model_name, "model_version": str(version), "mlflow_run_id": tracker.run_id}
        ).encode()
        store.put(onnx_ref, onnx_bytes)
        uploaded.append(onnx_ref)
        store.put(baseline_ref, baseline, "application/json")
        uploaded.append(baseline_ref)
        example = onnx_feed(ds, {k: v[:5] for k, v in ds.raw_val.items()})
        tracker.log_onnx_model(
            model, example, {"baseline.json": baseline, TORCH_ARTIFACT: torch_artifact(best, ds)}
        )
        tracker.log_metrics({"onnx_max_abs_diff": max_diff})
        tracker.tag_version(
            model_name,
            version,
            {MlflowTags.MODEL_URI: onnx_ref.uri, MlflowTags.BASELINE_URI: baseline_ref.uri},
        )
    except BaseException:
        tracker.delete_version(model_name, version)
        for ref in uploaded:
            try:
                store.delete(ref)
            except StorageError as e:
                log.warning("cannot remove %s: %s", ref.uri, e)
        raise

    return TrainingSummary(
        metrics=metrics,
        mlflow_run_id=tracker.run_id,
        model_version=version,
        model_uri=onnx_ref.uri,
        baseline_uri=baseline_ref.uri,
        promoted=_promote(spec, tracker, model_name, version, metrics),
    )


def _promote(
    spec: TrainingJobSpec, tracker: Tracker, model_name: str, version: int, metrics: dict[str, float]
) -> bool:
    p = spec.promotion
    if p is None:
        return False
    promoted, why = tracker.promote(
        model_name,
        version,
        p.alias,
        p.metric,
        metrics.get(p.metric, math.nan),
        p.threshold,
        p.require_improvement,
    )
    emit({"event": "promotion", "promoted": promoted, "alias": p.alias, "reason": why})
    return promoted


def _registered(tracker: Tracker, store: ObjectStore, model_name: str, key: str, bucket: str) -> Any:
    """The version an earlier attempt of this training registered completely, or None.

    Complete means everything _finish does before promotion is done: the version is READY and tagged
    with the URIs of its ONNX model and baseline (the tags are written last), and both objects are in
    the store. An attempt killed before tagging leaves a version nobody deploys or promotes (the
    operator resolves a version through those tags): it is removed here, as that attempt's rollback
    would have, and this attempt registers its own. (An attempt still finishing it in a terminating
    pod then fails to tag it and rolls back its own objects; this attempt's version is another.)
    A tagged version whose objects are gone is left alone: it may hold an alias."""
    found = None
    for mv in tracker.versions_tagged(model_name, MlflowTags.TRAINING_KEY, key):
        version = int(mv.version)
        onnx_ref = model_onnx(model_name, version, bucket)
        baseline_ref = model_baseline(model_name, version, bucket)
        tags = dict(mv.tags or {})
        tagged = (
            tags.get(MlflowTags.MODEL_URI) == onnx_ref.uri
            and tags.get(MlflowTags.BASELINE_URI) == baseline_ref.uri
        )
        if not tagged:
            log.warning(
                "removing version %s of %s: an earlier attempt of this training registered it "
                "and failed before finishing it",
                version,
                model_name,
            )
            tracker.delete_version(model_name, version)
            for ref in (onnx_ref, baseline_ref):
                try:
                    store.delete(ref)
                except StorageError as e:
                    log.warning("cannot remove %s: %s", ref.uri, e)
        elif found is None:
            if str(mv.status) == "READY" and store.exists(onnx_ref) and store.exists(baseline_ref):
                found = mv
            else:
                log.warning(
                    "not reusing version %s of %s (status %s): its model or baseline is missing",
                    version,
                    model_name,
                    mv.status,
                )
    return found


def _finish_earlier(
    spec: TrainingJobSpec,
    tracker: Tracker,
    model_name: str,
    mv: Any,
    metrics: dict[str, float],
    bucket: str,
) -> TrainingSummary:
    """A retried pod: report the version its earlier attempt registered, with that model's metrics
    (from its run; this attempt's model may differ where it trained from scratch), and do the steps
    after registration again (promotion is idempotent, marking the run finished follows)."""
    version = int(mv.version)
    log.info(
        "version %s of %s was registered by an earlier attempt of this training: reusing it",
        version,
        model_name,
    )
    emit({"event": "reused", "model_version": version, "mlflow_run_id": mv.run_id})
    logged = tracker.run_metrics(mv.run_id)
    reported = {k: logged[k] for k in metrics if k in logged and math.isfinite(logged[k])}
    return TrainingSummary(
        metrics=reported,
        mlflow_run_id=mv.run_id,
        model_version=version,
        model_uri=model_onnx(model_name, version, bucket).uri,
        baseline_uri=model_baseline(model_name, version, bucket).uri,
        promoted=_promote(spec, tracker, model_name, version, reported),
    )
