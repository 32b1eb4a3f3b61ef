"""The protocol: data preparation, model building, dense training and sparse fine-tuning stages.

Every method is fine-tuned from the *same* dense checkpoint with the *same* ``finetune``
schedule; seeds control the weights' initialisation, the clip sampling and the selectors' noise.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunebench.atomic import write_json
from prunebench.config import ExperimentConfig, MethodConfig
from prunebench.data.pipeline import ClipSampler
from prunebench.data.synth import generate
from prunebench.data.ytvis import YTVISDataset
from prunebench.evaluation.vis_eval import evaluate
from prunebench.models.presets import params_for_target
from prunebench.models.vis_model import VISModel
from prunebench.models.vit import create_backbone, load_timm_weights
from prunebench.training.checkpoint import load_weights, read_meta, save_checkpoint
from prunebench.training.loop import StepMetrics, train_steps
from prunebench.typed import to_dict

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_datasets(config: ExperimentConfig) -> tuple[YTVISDataset, YTVISDataset]:
    """The validated train and valid splits; generates the synthetic set first if configured and absent."""
    root = Path(config.data.root)
    if config.data.synth is not None and not (root / "annotations").is_dir():
        log.info("generating synthetic videos in %s", root)
        generate(root, config.data.synth)
    return YTVISDataset(root, config.data.train_split), YTVISDataset(root, config.data.valid_split)


def build_model(config: ExperimentConfig, num_classes: int, method: str, params: dict[str, Any]) -> VISModel:
    """The VIS model with ``method`` (parameters validated), on the configured device."""
    backbone = create_backbone(config.model.backbone, method, params, config.model.drop_path_rate)
    if config.model.pretrained:
        load_timm_weights(backbone, config.model.pretrained)
    return VISModel(backbone, num_classes, config.model.head).to(config.device)


def run_stage(
    config: ExperimentConfig,
    stage: str,
    out: str | Path,
    init_checkpoint: str | Path | None = None,
    on_log: Any = None,
) -> Path:
    """Train one stage (``train``: dense from scratch/pretrained; ``finetune``: the method from a dense checkpoint).

    Returns the checkpoint written to ``out``.
    """
    seed_everything(config.seed)
    train_set, _ = load_datasets(config)
    method, params = ("dense", {}) if stage == "train" else (config.method.name, config.method.params)
    model = build_model(config, len(train_set.categories), method, params)
    if init_checkpoint is not None:
        meta = read_meta(init_checkpoint)
        if meta.get("method") != "dense":
            log.warning("fine-tuning from a checkpoint of method %r, not a dense one", meta.get("method"))
        load_weights(init_checkpoint, model, allow_missing_prefix="backbone.method.")
    optim = getattr(config, stage)
    # the dense model keeps no temporal state: its stage trains on single frames; fine-tuning
    # uses frame chains (num_ref + 1 frames) so that VPP learns across frames
    num_ref = 0 if stage == "train" else config.data.num_ref
    sampler = ClipSampler(train_set, num_ref, config.data.frame_range, config.data.max_size, config.data.flip,
                          seed=config.seed)

    def report(metrics: StepMetrics) -> None:
        log.info("%s %s step %d/%d loss %.3f (task %.3f, prune %.3f) keep %.3f lr %.2e %.2fs/step",
                 stage, method, metrics.step, optim.steps, metrics.loss, metrics.task_loss, metrics.prune_loss,
                 metrics.keep, metrics.lr, metrics.seconds_per_step)
        if on_log is not None:
            on_log(metrics)

    train_steps(model, sampler, optim, config.seed, torch.device(config.device), on_log=report)
    meta = {"config": to_dict(config), "stage": stage, "method": method, "params": params, "seed": config.seed,
            "steps": optim.steps, "category_ids": sorted(train_set.categories), "dataset_sha256": train_set.sha256}
    return save_checkpoint(out, model, meta)


def evaluate_checkpoint(config: ExperimentConfig, checkpoint: str | Path, out: str | Path | None = None,
                        timing: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint on the valid split; write ``results.json`` and ``metrics.json`` atomically.

    The method and its parameters come from the checkpoint; ``method.params`` of the config are
    applied on top when the config names the same method (e.g. ``stochastic_inference: false``).
    """
    meta = read_meta(checkpoint)
    _, valid_set = load_datasets(config)
    params = dict(meta.get("params", {}))
    if config.method.name == meta["method"]:
        params.update(config.method.params)
    model = build_model(config, len(valid_set.categories), meta["method"], params)
    load_weights(checkpoint, model)
    metrics, results = evaluate(model, valid_set, config.eval, config.data.max_size, config.device, timing=timing)
    folder = Path(out or Path(config.out) / "eval" / meta["method"])
    metrics.update({"method": meta["method"], "params": params, "checkpoint": str(checkpoint),
                    "dataset_sha256": valid_set.sha256, "results": str(folder / "results.json")})
    write_json(folder / "results.json", results)
    write_json(folder / "metrics.json", metrics)
    return metrics


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a method at a goal PKR (None for the dense model)."""

    method: str
    target: float | None
    params: dict[str, Any]

    @property
    def label(self) -> str:
        """``dense`` or ``<method>-<target>``, e.g. ``vpp-0.40``."""
        return self.method if self.target is None else f"{self.method}-{self.target:.2f}"


def protocol_variants(methods: list[str], targets: tuple[float, ...]) -> list[Variant]:
    """The dense model, then every method at every target (presets of ``models.presets``)."""
    return [Variant("dense", None, {})] + [
        Variant(m, t, params_for_target(m, t)) for m in methods for t in targets
    ]


def run_protocol(config: ExperimentConfig, variants: list[Variant], timing: bool = True) -> list[dict[str, Any]]:
    """Dense training once, then fine-tune and evaluate every variant from that checkpoint.

    Writes ``<out>/<label>.safetensors`` and ``<out>/eval/<label>/{results,metrics}.json``; returns
    one metrics dict per variant (with ``label``, ``target``, ``wall_seconds``).
    """
    out = Path(config.out)
    rows = []
    begin = time.perf_counter()
    dense = run_stage(config, "train", out / "dense.safetensors")
    for variant in variants:
        tic = time.perf_counter()
        cfg = replace(config, method=MethodConfig(variant.method, variant.params))
        checkpoint = dense if variant.method == "dense" else run_stage(cfg, "finetune", out / f"{variant.label}.safetensors", dense)
        row = evaluate_checkpoint(cfg, checkpoint, out / "eval" / variant.label, timing=timing)
        row.update({"label": variant.label, "target": variant.target, "wall_seconds": time.perf_counter() - tic})
        rows.append(row)
        log.info("%s: AP %.1f, PKR %.3f, %.3f GMACs", variant.label, row["AP"] or 0.0, row["pkr"], row["gmacs"])
    log.info("protocol finished in %.0f s", time.perf_counter() - begin)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: AP, mAP_bbox, mAP_segm, PKR, GMACs, FPS per variant."""

    def num(value: Any, digits: int = 1) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = ["| variant | target PKR | AP | mAP_bbox | mAP_segm | PKR | GMACs | FPS backbone | FPS model |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {num(r['target'], 2)} | {num(r['AP'])} | {num(r['mAP_bbox'])} | {num(r['mAP_segm'])} "
                     f"| {r['pkr']:.3f} | {r['gmacs']:.3f} | {num(r.get('fps_backbone'))} | {num(r.get('fps_model'))} |")
    return "\n".join(lines)
