"""One training stage as a plain PyTorch loop (Ray Train wraps the same step in the platform).

AdamW with parameter groups (backbone × ``backbone_lr_mult``, pruner × ``pruner_lr_mult``, head × 1;
no weight decay on norms, biases, position and query embeddings), gradient clipping at
``clip_norm``, step decay by ``gamma`` at ``milestones`` (fractions of the steps), optional linear
warm-up. Each step runs a clip as a frame chain: the backbone state of frame t (VPP) is passed to
frame t+1 without detaching; the loss is the mean over frames of Mask2Former's loss plus the
method's sparsity loss. The forward runs under the config's ``precision`` (autocast for
bf16 / fp16; fp16 on a GPU with a loss scaler, whose overflowing steps it skips and lowers its scale).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from prunebench.config import OptimConfig
from prunebench.data.pipeline import ClipBatch, ClipSampler, collate_clips, foreground_patches
from prunebench.models.vis_model import VISModel
from prunebench.precision import Precision, autocast, grad_scaler
from prunebench.progress import Progress

log = logging.getLogger(__name__)
MAX_SKIPPED_STEPS = 10
# "queries": Mask2Former's query features and embeddings (``queries_features``, ``queries_embedder``)
NO_DECAY_HINTS = ("norm", "bias", "pos_embed", "query", "queries", "level_embed")


def param_groups(model: VISModel, optim: OptimConfig) -> list[dict]:
    """AdamW groups: (backbone | pruner | head) × (decay | no decay)."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "pruner" if name.startswith("backbone.method.") else "backbone" if name.startswith("backbone.") else "head"
        decay = param.ndim > 1 and not any(h in name for h in NO_DECAY_HINTS)
        groups.setdefault((part, decay), []).append(param)
    mult = {"backbone": optim.backbone_lr_mult, "pruner": optim.pruner_lr_mult, "head": 1.0}
    return [
        {"params": params, "lr": optim.lr * mult[part], "weight_decay": optim.weight_decay if decay else 0.0, "name": f"{part}{'' if decay else '/no_decay'}"}
        for (part, decay), params in groups.items()
    ]


def _lr_factor(step: int, optim: OptimConfig) -> float:
    warm = min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else 1.0
    decays = sum(step >= int(m * optim.steps) for m in optim.milestones)
    return warm * optim.gamma**decays


def _batches(loader: DataLoader, sampler: ClipSampler, shard: DistributedSampler | None) -> Iterator[ClipBatch]:
    """The batches of epoch after epoch. Each epoch's iterator is run out before its last batch is handed on
    (the shuffling sampler draws once more when it ends), so that at the end of an epoch the clip order's
    generator stands where the next epoch starts: what a checkpoint there saves (``LoopState``)."""
    while True:
        if shard is not None:
            shard.set_epoch(sampler.epoch)
        batches = iter(loader)
        for _ in range(len(loader) - 1):
            yield next(batches)
        last = next(batches)
        next(batches, None)  # runs it out: the sampler's closing draw (a dropped partial batch is never read)
        sampler.epoch += 1
        yield last


@dataclass
class StepMetrics:
    """What one finished step reports (``step`` counts from 1)."""

    step: int
    loss: float
    task_loss: float
    prune_loss: float
    keep: float
    lr: float
    seconds: float
    skipped: bool = False
    #: mean cumulative keep entering each pruning position (``"b3"`` = input of block 3) over the
    #: step's samples and frames (for a temporal method such as VPP, the frames that had its state,
    #: as at inference): what the method's ratio loss drives toward its stage targets
    stage_keep: dict[str, float] = field(default_factory=dict)


def _average_gradients(params: list[nn.Parameter], world: int) -> None:
    """All-reduce the gradients of every worker into their mean (one flat bucket)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


class LoopState:
    """What the loop needs besides the weights to go on exactly where it stopped: the optimizer, the loss
    scaler and the random states (torch's global generator, which draws the methods' Gumbel noise and the
    loss's sampled points; the GPU's; the generator that shuffles the clips of every epoch).

    Saved with a checkpoint at the end of a step (``state_dict``) and handed back to ``train_steps``
    (``resume_state``), the remaining steps are those of an uninterrupted run: same clips in the same
    order, same noise, same updates.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip_order: torch.Generator,
                 device: torch.device):
        self.optimizer, self.scaler, self.clip_order, self.device = optimizer, scaler, clip_order, device

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain containers only (loadable with ``torch.load(..., weights_only=True)``)."""
        state = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "torch_rng": torch.get_rng_state(), "clip_order_rng": self.clip_order.get_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` (with several ranks, rank 0's on each: their later random draws need not be
        those of the uninterrupted run, whose ranks' global generators part when their batches differ)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # a disabled scaler saves nothing
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.clip_order.set_state(state["clip_order_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


def train_steps(
    model: VISModel,
    sampler: ClipSampler,
    optim: OptimConfig,
    seed: int,
    device: torch.device,
    start_step: int = 0,
    resume_state: dict[str, Any] | None = None,
    on_step: Callable[[StepMetrics, LoopState], None] | None = None,
    rank: int = 0,
    world: int = 1,
    precision: Precision = "fp32",
) -> None:
    """Run steps ``start_step .. optim.steps - 1``.

    ``resume_state``: the ``LoopState.state_dict()`` that ``on_step`` was handed at step ``start_step``, the
    end of an epoch (with the weights of that step in ``model``): the run goes on as if it had not stopped.
    With ``world > 1`` (inside a Ray Train worker group) each worker reads its shard of the clips,
    starts from rank 0's weights and applies the mean gradient of all workers. ``precision``: the
    forward under autocast (``prunebench.precision``: the backbone in the lower precision, the head and
    its loss in fp32); weights, gradients and optimizer stay fp32.
    """
    groups = param_groups(model, optim)
    for g in groups:
        g["initial_lr"] = g["lr"]
    # fused: one kernel for all parameters per step, not ~10 operations per tensor (docs/performance.md)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, fused=True)
    clip_order = torch.Generator().manual_seed(seed)
    state = LoopState(optimizer, grad_scaler(precision, device), clip_order, device)
    if resume_state is not None:
        state.load_state_dict(resume_state)
    scaler = state.scaler
    params = [p for g in groups for p in g["params"]]
    shard = DistributedSampler(sampler, num_replicas=world, rank=rank, shuffle=True, seed=seed) if world > 1 else None
    if world > 1:
        for p in params:
            torch.distributed.broadcast(p.data, src=0)
    loader = DataLoader(sampler, batch_size=optim.batch_size, shuffle=shard is None, sampler=shard,
                        drop_last=len(sampler) >= optim.batch_size * world, collate_fn=collate_clips,
                        generator=clip_order)
    sampler.epoch = start_step // max(1, len(loader))
    batches = _batches(loader, sampler, shard)
    model.train()
    skipped = 0
    for step in range(start_step, optim.steps):
        tic = time.perf_counter()
        batch = next(batches)
        factor = _lr_factor(step, optim)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor
        with autocast(precision, device):
            chain = forward_chain(model, batch, device)
            loss = chain.task + chain.prune
        task, prune = chain.task.detach(), chain.prune.detach()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if world > 1:
            _average_gradients(params, world)
        scaler.unscale_(optimizer)  # clip the true gradients (a disabled scaler leaves them as they are)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.clip_norm)
        finite = bool(torch.isfinite(loss) and torch.isfinite(grad_norm))
        if finite:
            scaler.step(optimizer)
        elif scaler.is_enabled() and bool(torch.isfinite(loss)):
            log.debug("step %d: fp16 gradient overflow; update skipped, loss scale lowered", step)
        else:
            skipped += 1
            log.warning("step %d: non-finite loss or gradient (%s, %s); update skipped", step, float(loss.detach()), float(grad_norm))
            if skipped > MAX_SKIPPED_STEPS:
                raise FloatingPointError(f"more than {MAX_SKIPPED_STEPS} non-finite steps; lower the learning rate")
        scaler.update()
        if on_step is not None:
            on_step(StepMetrics(step + 1, float(loss.detach()), float(task), float(prune), chain.keep,
                                optimizer.param_groups[0]["lr"], time.perf_counter() - tic, skipped=not finite,
                                stage_keep=chain.stage_keep), state)


class LogEvery:
    """A stage's ``on_step`` callback: every step advances ``progress`` (the bar, or the ETA of its lines);
    every ``every`` steps and at the last one, the window's mean metrics are reported on it."""

    def __init__(self, every: int, progress: Progress):
        self.every, self.progress = every, progress
        self._window: list[StepMetrics] = []

    def __call__(self, metrics: StepMetrics, state: LoopState) -> None:
        self._window.append(metrics)
        self.progress.update()
        if metrics.step % self.every == 0 or metrics.step == self.progress.total:
            self.progress.report(describe_window(mean_metrics(self._window)))
            self._window = []

    def __enter__(self) -> LogEvery:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.close()


def describe_window(mean: StepMetrics) -> str:
    """One window of steps in words: losses, keep, learning rate, seconds per step."""
    return (f"loss {mean.loss:.3f} (task {mean.task_loss:.3f}, prune {mean.prune_loss:.3f}) keep {mean.keep:.3f} "
            f"lr {mean.lr:.2e} {mean.seconds:.2f}s/step")


def mean_metrics(window: list[StepMetrics]) -> StepMetrics:
    """Mean of a window of steps (step and lr of the last one)."""
    n = len(window)
    stages = window[-1].stage_keep
    return StepMetrics(window[-1].step, sum(m.loss for m in window) / n, sum(m.task_loss for m in window) / n,
                       sum(m.prune_loss for m in window) / n, sum(m.keep for m in window) / n, window[-1].lr,
                       sum(m.seconds for m in window) / n, skipped=any(m.skipped for m in window),
                       stage_keep={k: sum(m.stage_keep.get(k, 0.0) for m in window) / n for k in stages})


@dataclass(frozen=True)
class ChainLoss:
    """A batch of clips run as frame chains: mean task and sparsity losses over the frames (graphs kept for
    backward), mean block keep, and the mean keep entering each pruning position (``stage_keep``)."""

    task: Tensor
    prune: Tensor
    keep: float
    stage_keep: dict[str, float]


def forward_chain(model: VISModel, batch: ClipBatch, device: torch.device) -> ChainLoss:
    """Run every clip of ``batch`` as a frame chain: the backbone state of frame t (VPP) goes to frame t+1
    without detaching. For a temporal method the first frame only warms up the state (docs/methods.md §2.8):
    it adds its sparsity loss but no task loss, and its keeps are not the ones inference sees; the task loss
    and the stage keeps are the means over the frames that had the state (every frame, for the others). The
    sparsity loss is the mean over all frames."""
    frames = batch.frames.to(device)
    needs_foreground = model.backbone.method.needs_foreground
    state, task, prune, keep, tasked = None, 0.0, 0.0, 0.0, 0
    stage_keep: dict[str, list[float]] = {}
    steps = frames.shape[1]
    for t in range(steps):
        targets = [(m.to(device), c.to(device)) for m, c in batch.targets[t]]
        foreground = _foreground(targets) if needs_foreground else None
        out = model(frames[:, t], state=state, targets=targets, foreground=foreground)
        measured = state is not None or out.backbone.state is None
        state = out.backbone.state
        if measured:
            task, tasked = task + out.task_loss, tasked + 1
        prune = prune + out.backbone.loss
        keep += float(out.backbone.block_keep.detach().mean())
        for record in out.backbone.records if measured else ():
            stage_keep.setdefault(f"b{record.position}", []).append(float(record.keep.detach().mean()))
    if not tasked:
        raise ValueError(f"a chain of {steps} frame(s) gives a temporal method no frame with its state: "
                         "it needs at least 2 frames (data.num_ref >= 1)")
    return ChainLoss(task / tasked, prune / steps, keep / steps, {k: sum(v) / len(v) for k, v in stage_keep.items()})


def _foreground(targets: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``(B, N)`` ground-truth foreground patches of one frame of the batch (for the oracle control)."""
    return torch.stack([foreground_patches(masks) for masks, _ in targets])
