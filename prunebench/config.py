"""Experiment configuration: YAML presets (``prunebench/configs/``) → typed, validated dataclasses.

Every section and key is checked; an unknown key or a value of the wrong type stops with one line
naming it. ``--set section.key=value`` overrides are applied before validation (values parsed as
YAML). Method parameters (``method.params``) are validated against the method when the model is
built. Relative paths (``out``, ``data.root``, ``model.pretrained``) are made absolute against the
working directory of the process that loads the config: Ray workers and Tune trials (which run in
their trial folder) then read and write the same files as the driver.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from prunebench.data.synth import SynthSpec
from prunebench.errors import ConfigError
from prunebench.models.registry import AdapterName
from prunebench.models.vis_model import HeadConfig
from prunebench.training.convergence import ConvergenceRule
from prunebench.typed import build_dataclass


@dataclass(frozen=True)
class DataConfig:
    """Where the videos are and how clips are sampled."""

    root: str = "data"
    synth: SynthSpec | None = None  # generate the dataset at ``root`` if it does not exist
    train_split: str = "train"
    valid_split: str = "valid"
    max_size: int | None = None  # resize the long side to this (None: keep the video's size)
    num_ref: int = 1  # reference frames per training clip (the clip is num_ref + 1 frames)
    frame_range: int = 5
    flip: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and head. ``adapter``: ``none`` (the ViT's map through a simple pyramid) or
    ``vit_adapter`` (ViT-Adapter around the ViT, its pyramid feeding the head)."""

    backbone: str = "vit_tiny"
    adapter: AdapterName = "none"
    pretrained: str | None = None  # a local timm ViT checkpoint (safetensors or torch file)
    drop_path_rate: float = 0.0
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass(frozen=True)
class MethodConfig:
    """The pruning method fine-tuned from the dense checkpoint."""

    name: str = "dense"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    """One training stage: AdamW, backbone learning-rate multiplier, clipping, step decay."""

    steps: int = 100
    batch_size: int = 2
    lr: float = 1e-4
    backbone_lr_mult: float = 0.1
    pruner_lr_mult: float = 1.0
    weight_decay: float = 0.05
    clip_norm: float = 0.01
    milestones: tuple[float, ...] = (0.67,)  # fractions of ``steps``
    gamma: float = 0.1
    warmup_steps: int = 0
    log_every: int = 25


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: seeds, tracker, timing."""

    seed: int = 0
    top_k: int = 10
    nms_iou: float = 0.7
    timing_frames: int = 30
    warmup_frames: int = 5
    threads: int = 2


@dataclass(frozen=True)
class BenchmarkConfig:
    """The leaderboard run (``prunebench benchmark``): methods × keep settings × seeds, compared at goal PKRs.

    Each method is fine-tuned at every setting in ``settings``: a PKR that the method's own schedule
    formula implies for its parameters (``models.presets.params_for_pkr``), so that the measured
    PKRs bracket every goal. ``params`` may instead list explicit parameter sets per method.
    """

    methods: tuple[str, ...] = ("vpp", "dynamicvit", "tps", "svit", "random", "oracle")
    goals: tuple[float, ...] = (0.55, 0.40)
    settings: tuple[float, ...] = (0.33, 0.47, 0.62)
    seeds: tuple[int, ...] = (0, 1, 2)
    params: dict[str, Any] = field(default_factory=dict)  # method -> list of explicit parameter sets
    cpus_per_trial: int = 1
    gpus_per_trial: float | None = None  # None: 1 for a cuda config, 0 for a cpu one


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: data, model, method, the two training stages, evaluation."""

    name: str = "experiment"
    seed: int = 0
    device: str = "cpu"
    out: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    finetune: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    convergence: ConvergenceRule = field(default_factory=ConvergenceRule)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def validate(self) -> None:
        """Ranges that types alone do not catch."""
        for stage in ("train", "finetune"):
            optim: OptimConfig = getattr(self, stage)
            if optim.steps < 0 or optim.batch_size < 1:
                raise ConfigError(f"{stage}: steps={optim.steps}, batch_size={optim.batch_size}; allowed: steps >= 0, batch_size >= 1")
            if optim.lr <= 0 or optim.clip_norm <= 0:
                raise ConfigError(f"{stage}: lr={optim.lr}, clip_norm={optim.clip_norm}; allowed: both > 0")
            if any(not 0 < m < 1 for m in optim.milestones):
                raise ConfigError(f"{stage}.milestones={list(optim.milestones)}; allowed: fractions in (0, 1)")
        if self.data.synth is not None:
            self.data.synth.validate()
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device={self.device!r}; allowed: 'cpu', 'cuda'")


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Assign ``value`` at ``a.b.c`` in a nested dict (creating sections)."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


PRESETS_DIR = Path(__file__).resolve().parent / "configs"


def preset_names() -> list[str]:
    """Names of the presets shipped in ``prunebench/configs`` (demo, paper-tiny, ...)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(source: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a preset name (``demo``), a YAML file or a dict; apply dotted overrides; validate."""
    if isinstance(source, dict):
        raw, where = copy.deepcopy(source), "config"
    else:
        path = Path(source)
        if not path.exists() and str(source) in preset_names():
            path = PRESETS_DIR / f"{source}.yaml"
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found; presets: {', '.join(preset_names())}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    for key, value in (overrides or {}).items():
        set_path(raw, key, value)
    config = build_dataclass(ExperimentConfig, raw, unknown=lambda k, allowed: f"{where}: unknown key '{k}'; allowed: {allowed}",
                             wrong=lambda k, v, e: f"{where}: {k}={v!r} has the wrong type; allowed: {e}")
    config.validate()
    return _absolute_paths(config)


def _absolute_paths(config: ExperimentConfig) -> ExperimentConfig:
    pretrained = config.model.pretrained
    return replace(
        config,
        out=os.path.abspath(config.out),
        data=replace(config.data, root=os.path.abspath(config.data.root)),
        model=replace(config.model, pretrained=None if pretrained is None else os.path.abspath(pretrained)),
    )
