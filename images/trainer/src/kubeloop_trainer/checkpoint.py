"""Per-epoch checkpoints in object storage (``checkpoints/<namespace>/<trainingjob>/``).

``checkpoint.pt`` holds the identity (TrainingJob UID), the last finished epoch, the loop state and
the MLflow run id; for plain torch and DDP also the model and optimizer state. DeepSpeed writes its
own (possibly ZeRO-partitioned) files under ``deepspeed/``; every node uploads what its ranks wrote.
A checkpoint of another UID (a re-created TrainingJob of the same name) is ignored and replaced.
``summary.json`` marks a finished run: a restarted pod of the same UID re-reports it instead of
training and registering again.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kubeloop.contracts import ObjectRef
from kubeloop.storage import ObjectNotFoundError, ObjectStore, folder
from kubeloop_trainer.distributed import DistContext
from kubeloop_trainer.loop import LoopState, TorchEngine

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
GRAPHS_REFUSED = "cuda-graphs-refused.json"
DEEPSPEED_DIR = "deepspeed"


def _barrier(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.barrier()


class Checkpointer:
    def __init__(
        self, store: ObjectStore, prefix: ObjectRef, uid: str, ctx: DistContext, scratch: Path
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.uid = uid
        self.ctx = ctx
        self.scratch = scratch

    # --- finished runs -----------------------------------------------------------------------------

    def finished_summary(self) -> str | None:
        try:
            doc = json.loads(self.store.get(self.prefix.child(SUMMARY)))
        except ObjectNotFoundError:
            return None
        return json.dumps(doc["summary"]) if doc.get("uid") == self.uid else None

    def mark_finished(self, summary_json: str) -> None:
        doc = {"uid": self.uid, "summary": json.loads(summary_json)}
        self.store.put(self.prefix.child(SUMMARY), json.dumps(doc).encode(), "application/json")
        for obj in list(self.store.list(folder(self.prefix))):
            if not obj.ref.key.endswith("/" + SUMMARY):
                self.store.delete(obj.ref)

    # --- CUDA graphs (kubeloop_trainer.graphs) -----------------------------------------------------

    def graphs_refused(self) -> bool:
        """Whether an earlier attempt of this UID failed inside a CUDA graph capture."""
        try:
            doc = json.loads(self.store.get(self.prefix.child(GRAPHS_REFUSED)))
        except ObjectNotFoundError:
            return False
        return bool(doc.get("uid") == self.uid)

    def refuse_graphs(self, reason: str) -> None:
        """Notes a failed capture, so that the retry trains without graphs (a TrainingJob cannot ask)."""
        doc = {"uid": self.uid, "reason": reason}
        self.store.put(self.prefix.child(GRAPHS_REFUSED), json.dumps(doc).encode(), "application/json")

    # --- checkpoints -------------------------------------------------------------------------------

    def load(self, data: str | None = None) -> dict[str, Any] | None:
        """The checkpoint of this UID, or None (no checkpoint, or one of another UID). With ``data``
        (:func:`kubeloop_trainer.data.data_fingerprint`), also None for a checkpoint saved with
        another ``extra["data"]``: a dataset prefix read again after a restart may have changed."""
        try:
            raw = self.store.get(self.prefix.child(CHECKPOINT))
        except ObjectNotFoundError:
            return None
        ckpt: dict[str, Any] = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if ckpt.get("uid") != self.uid:
            log.info("ignoring the checkpoint of another TrainingJob uid %s", ckpt.get("uid"))
            return None
        if data is not None and ckpt.get("extra", {}).get("data") != data:
            log.warning(
                "ignoring the checkpoint of epoch %s: the dataset has changed since", ckpt.get("epoch")
            )
            return None
        return ckpt

    def save_torch(self, engine: TorchEngine, state: LoopState, extra: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        ckpt = {
            "uid": self.uid,
            "epoch": state.epoch,
            "backend": "torch",
            "model": engine.module.state_dict(),
            "optimizer": engine.optimizer.state_dict(),
            "loop": state.to_dict(),
            "extra": extra,
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        self.store.put(self.prefix.child(CHECKPOINT), buf.getvalue())

    @staticmethod
    def restore_torch(ckpt: dict[str, Any], engine: TorchEngine) -> LoopState:
        engine.module.load_state_dict(ckpt["model"])
        engine.optimizer.load_state_dict(ckpt["optimizer"])
        return LoopState.from_dict(ckpt["loop"])

    def _ds_local(self) -> Path:
        return self.scratch / "deepspeed-checkpoint"

    def save_deepspeed(self, engine: Any, state: LoopState, extra: dict[str, Any]) -> None:
        local = self._ds_local()
        if self.ctx.local_rank == 0 and local.exists():
            shutil.rmtree(local)
        _barrier(self.ctx)
        engine.save(local, {"loop": state.to_dict()})
        _barrier(self.ctx)
        if self.ctx.local_rank == 0:
            for f in sorted(p for p in local.rglob("*") if p.is_file()):
                rel = f.relative_to(local).as_posix()
                self.store.put_file(self.prefix.child(f"{DEEPSPEED_DIR}/{rel}"), f)
        _barrier(self.ctx)
        if self.ctx.is_main:
            meta = {"uid": self.uid, "epoch": state.epoch, "backend": "deepspeed", "extra": extra}
            buf = io.BytesIO()
            torch.save(meta, buf)
            self.store.put(self.prefix.child(CHECKPOINT), buf.getvalue())

    def restore_deepspeed(self, engine: Any) -> LoopState:
        local = self._ds_local()
        if self.ctx.local_rank == 0:
            if local.exists():
                shutil.rmtree(local)
            base = folder(self.prefix.child(DEEPSPEED_DIR))
            for obj in list(self.store.list(base)):
                self.store.get_file(obj.ref, local / obj.ref.key[len(base.key) :])
        _barrier(self.ctx)
        client = engine.load(local)
        return LoopState.from_dict(client["loop"])
