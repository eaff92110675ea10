"""A training step replayed from one captured CUDA graph.

A tabular model's step on a GPU is launch-bound: forward, backward and the optimizer step are a few
hundred tiny kernels, each costing more host time to launch than device time to run, and DeepSpeed's
ZeRO path adds Python of its own on top. Captured once as a CUDA graph, a whole step is one launch.

Every batch is trained exactly once, in order, whatever happens:

* the first ``WARMUP`` full batches run eagerly on the run's own stream (CUDA's rule before a capture: lazy
  initialisations such as cuBLAS workspaces and optimizer state must not happen inside it);
* the next full batch is captured (recording runs nothing on the device) and then replayed;
* every later full batch copies its row indices into the captured index tensor and replays.

A graphed run does all of its CUDA work on one stream of its own (``use_own_stream``), the engine's
set-up included: an autograd node keeps the stream it was made on, and a gradient accumulated through a
node made on the default stream would join that stream to the capture, which CUDA refuses (DeepSpeed's
ZeRO engine on one GPU hit exactly that when only the steps ran on a side stream).

Only full batches are replayed; the shorter last batch of an epoch runs eagerly (a graph has fixed
shapes). A capture whose step ran to its end but that CUDA refused at the end (e.g. another thread's
CUDA call invalidated it) leaves the model and optimizer as they were before that step, since nothing
ran on the device (DeepSpeed's own step counters moved on by one; replays never move them, and nothing
of ours reads them): that batch and all later ones then run eagerly. A step that raised inside the
capture may have left the engine half-way through its Python bookkeeping, so training stops with a
retryable error rather than go on with gradients it cannot vouch for; the trainer notes the refusal
next to its checkpoints, and the retry trains without graphs.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import torch

from kubeloop_trainer.errors import CudaGraphError

log = logging.getLogger(__name__)

Step = Callable[[torch.Tensor], torch.Tensor]  # row indices of one batch -> its (detached) loss


class GraphedStep:
    """Runs ``step`` for each full batch, from a CUDA graph once it is captured (see the module doc)."""

    WARMUP = 3

    def __init__(self, step: Step, batch_size: int, device: torch.device) -> None:
        self.step = step
        self.batch_size = batch_size
        self.device = device
        self.warmed = 0
        # the captured graph with its input (row indices) and output (the loss), each a fixed tensor
        self.captured: tuple[Any, torch.Tensor, torch.Tensor] | None = None
        self.eager = False  # capture was refused: run every batch eagerly
        self.replays = 0
        self.stream: Any = None  # the run's own stream: the warm-up steps' and the capture's

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape != (self.batch_size,):
            raise ValueError(
                f"a graphed step takes full batches of {self.batch_size} rows, not {tuple(batch.shape)}"
            )
        if self.eager:
            return self.step(batch)
        if self.warmed < self.WARMUP:
            self.warmed += 1
            return self._warm_up(batch)
        if self.captured is None:
            self.captured = self._capture(batch)
            if self.captured is None:
                self.eager = True
                return self.step(batch)
        graph, index, loss = self.captured
        index.copy_(batch)
        self._replay(graph)
        self.replays += 1
        return loss

    # The CUDA calls, apart so that the schedule above is testable without a GPU.
    def _run_stream(self) -> Any:
        """The run's own stream (use_own_stream), where the warm-ups and the capture happen: CUDA cannot
        capture on the default stream, and a side stream for the steps alone was refused on the GPU (see the
        module doc)."""
        if self.stream is None:
            current = torch.cuda.current_stream(self.device)
            if current == torch.cuda.default_stream(self.device):
                raise RuntimeError("a graphed run must do its CUDA work on its own stream (use_own_stream)")
            self.stream = current
        return self.stream

    def _warm_up(self, batch: torch.Tensor) -> torch.Tensor:
        self._run_stream()
        return self.step(batch)

    def _new_graph(self) -> Any:
        return torch.cuda.CUDAGraph()

    def _recording(self, graph: Any) -> Any:
        # On the stream the warm-up steps ran on, with no earlier step's autograd graph left in a reference
        # cycle. thread_local: calls other threads make meanwhile (NCCL's watchdog polling its events) do not
        # invalidate the capture, as they do under the default "global" mode.
        gc.collect()
        return torch.cuda.graph(graph, stream=self._run_stream(), capture_error_mode="thread_local")

    def _replay(self, graph: Any) -> None:
        graph.replay()

    def _capture(self, batch: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor] | None:
        index = batch.clone()
        graph = self._new_graph()
        finished = False
        try:
            with self._recording(graph):
                loss = self.step(index)
                finished = True
        except Exception as e:
            if not finished:
                raise CudaGraphError(
                    f"the training step failed while being captured as a CUDA graph ({type(e).__name__}: "
                    f"{str(e)[:300]}); the next attempt trains without CUDA graphs"
                ) from e
            log.warning(
                "CUDA graph capture refused (%s: %s); training on without graphs", type(e).__name__, e
            )
            return None
        return graph, index, loss


def graphs_wanted(
    enabled: bool, deepspeed: bool, zero_stage: int, precision: str, device: torch.device, world_size: int
) -> bool:
    """Whether a run replays its steps from a CUDA graph: DeepSpeed ZeRO stage 1 in bf16 on one CUDA GPU,
    where DeepSpeed's per-step Python is what a launch-bound step pays for, and where it was measured.
    fp16 checks every step for overflow and fp32 computes the gradient norm, each reading a value back
    from the GPU, which a capture cannot do; stages 2 and 3 add per-parameter hooks and partitioning; and
    a graph would hold one rank's collectives."""
    return (
        enabled
        and deepspeed
        and zero_stage == 1
        and precision == "bf16"
        and device.type == "cuda"
        and world_size == 1
    )


def use_own_stream(device: torch.device) -> Any:
    """Makes a new stream the current one of ``device`` (after the work queued so far) and returns it."""
    stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream(device))
    torch.cuda.set_stream(stream)
    return stream


def back_to_default_stream(device: torch.device, stream: Any) -> None:
    default = torch.cuda.default_stream(device)
    default.wait_stream(stream)
    torch.cuda.set_stream(default)
