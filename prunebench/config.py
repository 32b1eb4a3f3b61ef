"""Experiment configuration: YAML presets (``prunebench/configs/``) → frozen, validated pydantic models.

Every section and key is checked by pydantic (``prunebench.validation``): an unknown key, a value of
the wrong type or out of range stops with one line naming the key, the value and what is allowed,
e.g. ``demo.yaml: train.lr must be a number > 0, got 'abc'``. ``--set section.key=value`` overrides
(values parsed as YAML) are applied before validation; a problem an override brings in names that
``--set`` instead of the file. A YAML syntax error names ``file:line:column``. The method's
parameters (``method.params``) are validated against the method and the backbone at load time too.
Relative paths (``out``, ``data.root``, ``model.pretrained``) are made absolute against the
working directory of the process that loads the config: Ray workers and Tune trials (which run in
their trial folder) then read and write the same files as the driver.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator

from prunebench.data.synth import SynthSpec
from prunebench.errors import ConfigError
from prunebench.models.params import parse_params
from prunebench.models.registry import BACKBONES, AdapterName, method_class
from prunebench.models.head_config import HeadConfig
from prunebench.precision import Precision
from prunebench.training.convergence import ConvergenceRule
from prunebench.validation import ConfigModel, Items, validated
from prunebench.validation_errors import yaml_error_line

#: a fraction strictly between 0 and 1
OpenFraction = Annotated[float, Field(gt=0, lt=1)]


class DataConfig(ConfigModel):
    """Where the videos are and how clips are sampled."""

    root: str = "data"
    synth: SynthSpec | None = None  # generate the dataset at ``root`` if it does not exist
    train_split: str = "train"
    valid_split: str = "valid"
    max_size: int | None = Field(None, ge=1)  # resize the long side to this (None: keep the video's size)
    num_ref: int = Field(1, ge=0)  # reference frames per training clip (the clip is num_ref + 1 frames)
    frame_range: int = Field(5, ge=0)
    flip: bool = True


class ModelConfig(ConfigModel):
    """Backbone and head. ``adapter``: ``none`` (the ViT's map through a simple pyramid) or
    ``vit_adapter`` (ViT-Adapter around the ViT, its pyramid feeding the head)."""

    backbone: str = "vit_tiny"
    adapter: AdapterName = "none"
    pretrained: str | None = None  # a local timm ViT checkpoint (safetensors or torch file)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    head: HeadConfig = HeadConfig()

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        if name not in BACKBONES:
            raise ValueError("one of " + ", ".join(repr(b) for b in sorted(BACKBONES)))
        return name


class MethodConfig(ConfigModel):
    """The pruning method fine-tuned from the dense checkpoint; ``params`` as written (checked at load)."""

    name: str = "dense"
    params: dict[str, Any] = {}


class OptimConfig(ConfigModel):
    """One training stage: AdamW, backbone learning-rate multiplier, clipping, step decay."""

    steps: int = Field(100, ge=0)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(1e-4, gt=0)
    backbone_lr_mult: float = Field(0.1, ge=0)
    pruner_lr_mult: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    clip_norm: float = Field(0.01, gt=0)
    milestones: Items[OpenFraction] = (0.67,)  # fractions of ``steps``
    gamma: float = Field(0.1, gt=0)
    warmup_steps: int = Field(0, ge=0)
    log_every: int = Field(25, ge=1)


class EvalConfig(ConfigModel):
    """Evaluation: seeds, tracker, timing."""

    seed: int = 0
    top_k: int = Field(10, ge=1)
    nms_iou: float = Field(0.7, ge=0, le=1)
    timing_frames: int = Field(30, ge=1)
    warmup_frames: int = Field(5, ge=0)
    threads: int = Field(2, ge=1)
    lead_in_frames: int = Field(3, ge=0)  # white frames before each video for the scene-cut study (0: skip it)


class BenchmarkConfig(ConfigModel):
    """The leaderboard run (``prunebench benchmark``): methods × keep settings × seeds, compared at goal PKRs.

    Each method is fine-tuned at every setting in ``settings``: a PKR that the method's own schedule
    formula implies for its parameters (``models.presets.params_for_pkr``), so that the measured
    PKRs bracket every goal. ``fixed`` holds parameters a method keeps at every setting (its positions,
    a loss weight): the setting's schedule parameters are solved with them in place. ``params`` may instead
    list explicit parameter sets per method.
    """

    methods: Items[str] = ("vpp", "dynamicvit", "tps", "svit", "random", "oracle")
    goals: Items[float] = (0.55, 0.40)
    settings: Items[float] = (0.33, 0.47, 0.62)
    seeds: Items[int] = (0, 1, 2)
    fixed: dict[str, dict[str, Any]] = {}  # method -> parameters held at every setting
    params: dict[str, Any] = {}  # method -> list of explicit parameter sets
    cpus_per_trial: int = 1
    gpus_per_trial: float | None = None  # None: 1 for a cuda config, 0 for a cpu one


class ExperimentConfig(ConfigModel):
    """A whole experiment: data, model, method, the two training stages, evaluation.

    ``precision``: ``fp32``, or autocast to ``bf16`` / ``fp16`` in training and inference (``prunebench.precision``).
    ``dense_precision``: the dense stage's (``train``) precision when it differs (None: ``precision``): the dense
    model is one shared, cached starting point, so it can be trained in fp32 while every fine-tune, evaluation
    and timing runs in ``precision`` (what the leaderboard keys its rows by).
    """

    name: str = "experiment"
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Precision = "fp32"
    dense_precision: Precision | None = None
    out: str = "runs"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    train: OptimConfig = OptimConfig()
    finetune: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    convergence: ConvergenceRule = ConvergenceRule()
    benchmark: BenchmarkConfig = BenchmarkConfig()

    def stage_precision(self, stage: str) -> Precision:
        """The precision a training stage runs in: ``dense_precision`` (else ``precision``) for the dense stage
        ``train``, ``precision`` for ``finetune``."""
        if stage == "train" and self.dense_precision is not None:
            return self.dense_precision
        return self.precision


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Assign ``value`` at ``a.b.c`` in a nested dict (creating sections)."""
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[:depth + 1])} is not a section, got {child!r}")
        node = child
    node[keys[-1]] = value


PRESETS_DIR = Path(__file__).resolve().parent / "configs"


def preset_names() -> list[str]:
    """Names of the presets shipped in ``prunebench/configs`` (demo, paper-tiny, ...)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(source: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a preset name (``demo``), a YAML file or a dict; apply dotted overrides; validate.

    A ``ConfigError`` names the source of the first problem: the file (or ``config`` for a dict),
    or the ``--set KEY=VALUE`` that brought it in.
    """
    raw, where = _read(source)
    overrides = dict(overrides or {})
    try:
        return _absolute_paths(_validate(_overridden(raw, overrides)))
    except ConfigError as error:
        raise _blame(raw, where, overrides, error) from None


def _blame(raw: dict[str, Any], where: str, overrides: dict[str, Any], error: ConfigError) -> ConfigError:
    """``error`` as the first source that brings a problem in tells it: the file alone, then each
    override on top of the ones before it (``--set train.lr=abc: train.lr must be ...``)."""
    items = list(overrides.items())
    for count in range(len(items) + 1):
        try:
            _validate(_overridden(raw, dict(items[:count])))
        except ConfigError as first:
            return ConfigError(f"{where if count == 0 else _set_text(*items[count - 1])}: {first}")
    return ConfigError(f"{where}: {error}")


def _read(source: str | Path | dict[str, Any], base_dir: Path | None = None,
          seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """The raw mapping of ``source`` and how errors name it (the file's path, or ``config``).

    ``extends: NAME`` (a preset, or a YAML file relative to the extending one) reads that config first and
    lays this one over it: sections merge key by key, any other value (a list included) replaces the base's.
    """
    if isinstance(source, dict):
        raw, where, folder = copy.deepcopy(source), "config", Path.cwd()
    else:
        path = Path(source)
        if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
            path = base_dir / path
        if not path.exists() and str(source) in preset_names():
            path = PRESETS_DIR / f"{source}.yaml"
        where, folder = str(path), path.resolve().parent
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found; presets: {', '.join(preset_names())}") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a folder; allowed: a YAML file or a preset ({', '.join(preset_names())})") from None
        except yaml.YAMLError as error:
            raise ConfigError(yaml_error_line(where, error)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections, got {type(raw).__name__}")
    if "extends" not in raw:
        return raw, where
    base = raw.pop("extends")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{where}: extends {base!r}; allowed: the name of a preset or a YAML file")
    if base in seen or where in seen:
        raise ConfigError(f"{where}: extends {base!r} loops back to itself ({' -> '.join((*seen, where, base))})")
    try:
        parent, _ = _read(base, folder, (*seen, where))
    except ConfigError as error:
        raise ConfigError(f"{where}: extends {base}: {error}") from None
    return _merged(parent, raw), where


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` laid over ``base``: mappings merged key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _overridden(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with the dotted ``overrides`` applied."""
    tree = copy.deepcopy(raw)
    for key, value in overrides.items():
        set_path(tree, key, copy.deepcopy(value))
    return tree


def _set_text(key: str, value: Any) -> str:
    """How an override is named in errors: ``--set train.lr=abc`` (the value as typed, JSON for non-strings)."""
    return f"--set {key}={value if isinstance(value, str) else json.dumps(value, default=str)}"


def _validate(raw: dict[str, Any]) -> ExperimentConfig:
    """``raw`` as a config, with the method's parameters checked; ConfigError without the source."""
    config = validated(ExperimentConfig, raw)
    try:
        params_cls = method_class(config.method.name).Params
    except ConfigError as error:  # an unknown name (the allowed ones listed), or a plug-in that fails to load
        raise ConfigError(f"method.name: {error}") from None
    depth = BACKBONES[config.model.backbone][3]
    parse_params(config.method.name, params_cls, config.method.params, depth, key="method.params")
    return config


def _absolute_paths(config: ExperimentConfig) -> ExperimentConfig:
    pretrained = config.model.pretrained
    return config.model_copy(update={
        "out": os.path.abspath(config.out),
        "data": config.data.model_copy(update={"root": os.path.abspath(config.data.root)}),
        "model": config.model.model_copy(update={"pretrained": None if pretrained is None else os.path.abspath(pretrained)}),
    })
