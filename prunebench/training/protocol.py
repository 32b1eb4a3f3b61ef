"""The protocol: data preparation, model building, dense training and sparse fine-tuning stages.

Every method is fine-tuned from the *same* dense checkpoint with the *same* ``finetune``
schedule; seeds control the weights' initialisation, the clip sampling and the selectors' noise.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from prunebench.atomic import write_bytes, write_json
from prunebench.config import ExperimentConfig, OptimConfig
from prunebench.data.pipeline import ClipSampler
from prunebench.data.split import check_disjoint
from prunebench.data.synth import generate
from prunebench.data.ytvis import YTVISDataset
from prunebench.evaluation.plots import keep_mask_figure
from prunebench.evaluation.vis_eval import evaluate
from prunebench.models.vis_model import VISModel
from prunebench.models.vit import create_backbone, load_timm_weights
from prunebench.progress import Progress
from prunebench.training.checkpoint import Checkpoint, method_params, read_checkpoint, save_checkpoint
from prunebench.training.loop import LogEvery, train_steps
from prunebench.validation import to_dict

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_datasets(config: ExperimentConfig, need: Collection[str] = ("train", "valid")) -> tuple[YTVISDataset, YTVISDataset]:
    """The validated train and valid splits; generates the synthetic set first if configured and absent.

    The splits named in ``need`` (``train``, ``valid``: those the command uses) must have a frame, and
    splits that read one frame folder must not share a video (ConfigError naming the split or the shared ids).
    """
    root = Path(config.data.root)
    if config.data.synth is not None and not (root / "annotations").is_dir():
        log.info("generating synthetic videos in %s", root)
        generate(root, config.data.synth)
    splits = {"train": YTVISDataset(root, config.data.train_split), "valid": YTVISDataset(root, config.data.valid_split)}
    for role in need:
        splits[role].check_not_empty(f"data.{role}_split")
    check_disjoint(splits["train"], splits["valid"])
    return splits["train"], splits["valid"]


def build_model(config: ExperimentConfig, num_classes: int, method: str, params: dict[str, Any]) -> VISModel:
    """The VIS model with ``method`` (parameters validated), on the configured device."""
    backbone = create_backbone(config.model.backbone, method, params, config.model.drop_path_rate, config.model.adapter)
    if config.model.pretrained:
        load_timm_weights(backbone, config.model.pretrained)
    return VISModel(backbone, num_classes, config.model.head).to(config.device)


@dataclass
class PreparedStage:
    """Everything one training stage needs, built the same way for the plain loop and Ray Train."""

    model: VISModel
    sampler: ClipSampler
    valid: YTVISDataset
    optim: OptimConfig
    meta: dict[str, Any]


def prepare_stage(config: ExperimentConfig, stage: str, init_checkpoint: str | Path | None = None) -> PreparedStage:
    """Seed, read and check the data, build the model (loading the dense checkpoint when fine-tuning)."""
    seed_everything(config.seed)
    train_set, valid_set = load_datasets(config, need=("train",))  # a trial's valid split was checked by its driver
    method, params = ("dense", {}) if stage == "train" else (config.method.name, config.method.params)
    model = build_model(config, len(train_set.categories), method, params)
    if init_checkpoint is not None:
        init = read_checkpoint(init_checkpoint)
        if init.meta.get("method") != "dense":
            log.warning("fine-tuning from a checkpoint of method %r, not a dense one", init.meta.get("method"))
        init.load_into(model, allow_missing_prefix="backbone.method.")
    # the dense model keeps no temporal state: its stage trains on single frames; fine-tuning
    # uses frame chains (num_ref + 1 frames) so that VPP learns across frames
    num_ref = 0 if stage == "train" else config.data.num_ref
    sampler = ClipSampler(train_set, num_ref, config.data.frame_range, config.data.max_size, config.data.flip,
                          seed=config.seed)
    optim = getattr(config, stage)
    meta = {"config": to_dict(config), "stage": stage, "method": method, "params": params, "seed": config.seed,
            "steps": optim.steps, "category_ids": sorted(train_set.categories), "dataset_sha256": train_set.sha256,
            "init_checkpoint": None if init_checkpoint is None else str(init_checkpoint)}
    return PreparedStage(model, sampler, valid_set, optim, meta)


def log_progress(stage: str, method: str, optim: OptimConfig, start: int = 0) -> LogEvery:
    """The ``on_step`` progress of a stage (a context manager): a bar, or a line with the ETA per logging window."""
    return LogEvery(optim.log_every, Progress(f"{stage} {method}", optim.steps, "steps", interval=None, initial=start,
                                              logger=log))


def run_stage(config: ExperimentConfig, stage: str, out: str | Path, init_checkpoint: str | Path | None = None) -> Path:
    """Train one stage in this process (``train``: dense; ``finetune``: the method from a dense checkpoint).

    Returns the checkpoint written to ``out``.
    """
    prepared = prepare_stage(config, stage, init_checkpoint)
    optim = prepared.optim
    with log_progress(stage, prepared.meta["method"], optim) as logger:
        train_steps(prepared.model, prepared.sampler, optim, config.seed, torch.device(config.device), on_step=logger,
                    precision=config.stage_precision(stage))
    return save_checkpoint(out, prepared.model, prepared.meta)


def load_model(config: ExperimentConfig, checkpoint: str | Path | Checkpoint, num_classes: int) -> VISModel:
    """The model of a checkpoint: its method and parameters, with ``method.params`` of the config on top
    when the config names the same method (e.g. ``stochastic_inference: false`` for evaluation)."""
    loaded = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    params = method_params(loaded.meta, config.method.name, config.method.params)
    model = build_model(config, num_classes, loaded.meta["method"], params)
    loaded.load_into(model)
    return model


def evaluate_checkpoint(config: ExperimentConfig, checkpoint: str | Path, out: str | Path | None = None,
                        timing: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint on the valid split; write ``results.json`` and ``metrics.json`` atomically.

    The method and its parameters come from the checkpoint; ``method.params`` of the config are
    applied on top when the config names the same method (e.g. ``stochastic_inference: false``).
    """
    loaded = read_checkpoint(checkpoint)
    meta = loaded.meta
    _, valid_set = load_datasets(config, need=("valid",))
    model = load_model(config, loaded, len(valid_set.categories))
    evaluation = evaluate(model, valid_set, config.eval, config.data.max_size, config.device, timing=timing,
                          precision=config.precision)
    metrics = evaluation.metrics
    folder = Path(out or Path(config.out) / "eval" / meta["method"])
    resolved = to_dict(model.backbone.method.params)
    metrics.update({"method": meta["method"], "params": resolved, "checkpoint": str(checkpoint),
                    "dataset_sha256": valid_set.sha256, "results": str(folder / "results.json")})
    write_json(folder / "results.json", evaluation.results)
    write_json(folder / "metrics.json", metrics)
    write_bytes(folder / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False).encode())
    blocks = sorted({0, *model.backbone.method.positions, model.backbone.depth - 1})
    keep_mask_figure(evaluation.examples, blocks, folder / "keep_masks.png", title=f"{meta['method']} {resolved}")
    return metrics
