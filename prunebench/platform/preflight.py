"""Checks on the driver before anything starts.

Every command that builds a model calls these first (``platform/cli.py``), before Ray starts, an
MLflow run is opened or an output folder is made: a bad input then ends with one line and exit code 2
and leaves nothing behind. They check the backbone, the method and its parameters, ``model.pretrained``
(a readable timm ViT file whose tensors fit the backbone), the device (a GPU for ``device=cuda``), the
precision on it (``bf16`` on a CPU with bfloat16 instructions, ``fp16`` on a GPU only) and the checkpoint
a command starts from (``--from``, ``--checkpoint``: a prunebench checkpoint of the config's backbone).
Everything here only reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunebench.config import ExperimentConfig
from prunebench.errors import ConfigError
from prunebench.models.pretrained import read_timm_state
from prunebench.models.pruning import PruningMethod
from prunebench.models.registry import backbone_spec, build_method, method_names
from prunebench.platform.resources import check_local_gpu
from prunebench.precision import check_precision
from prunebench.training.checkpoint import check_backbone, method_params

log = logging.getLogger(__name__)


def check_model(backbone: str, method: str, params: Mapping[str, Any] | None) -> PruningMethod:
    """The backbone is known and ``params`` are valid parameters of ``method`` on it; returns the method built."""
    _, dim, _, depth = backbone_spec(backbone)
    built = build_method(method, params, dim, depth)
    log.debug("checked: backbone %s, method %s %s", backbone, method, dict(params or {}))
    return built


def check_pretrained(path: str, backbone: str) -> None:
    """``model.pretrained`` exists, reads as a timm ViT state dict, and its tensors fit ``backbone``."""
    state = read_timm_state(path)  # a missing or unreadable file is refused before timm is imported
    from prunebench.models.vit import create_backbone, load_timm_state

    load_timm_state(create_backbone(backbone), state, path)


def check_experiment(config: ExperimentConfig, address: str | None = None, ray: bool = True) -> None:
    """What a command that builds the config's model needs: the backbone, ``model.pretrained``, the device
    (``ray=False``: the command runs in this process, never on a cluster) and the precision on it. A pruning
    method is checked where the command takes it: ``check_finetune``, ``check_evaluated``, a search space,
    a benchmark grid."""
    check_model(config.model.backbone, "dense", {})
    if config.model.pretrained:
        check_pretrained(config.model.pretrained, config.model.backbone)
    check_local_gpu(config, address, ray)
    check_precision(config.precision, config.device)
    if config.dense_precision is not None:
        check_precision(config.dense_precision, config.device, key="dense_precision")
    log.debug("checked: pretrained weights %s, device %s, precision %s (dense stage %s)", config.model.pretrained,
              config.device, config.precision, config.stage_precision("train"))


def check_finetune(config: ExperimentConfig) -> None:
    """Fine-tuning needs a pruning method (``dense`` would overwrite the dense checkpoint with itself), and a
    method that carries state from frame to frame (VPP) needs clips of at least two frames: the first frame
    of a chain only warms up that state."""
    if config.method.name == "dense":
        methods = ", ".join(m for m in method_names() if m != "dense")
        raise ConfigError(f"method.name=dense: finetune needs a pruning method; allowed: --set method.name=NAME, "
                          f"NAME one of {methods}")
    check_clips(config, check_model(config.model.backbone, config.method.name, config.method.params))


def check_clips(config: ExperimentConfig, method: PruningMethod) -> None:
    """A method that carries state from frame to frame (VPP) is fine-tuned on the frames that have that state:
    its clips need at least one reference frame (``data.num_ref >= 1``); every command that fine-tunes checks it
    for each method it will fine-tune."""
    if method.observation_points and config.data.num_ref < 1:
        raise ConfigError(f"data.num_ref={config.data.num_ref}: {method.name} carries state from frame to "
                          "frame and trains on the frames that have it; allowed: data.num_ref >= 1")


def check_evaluated(config: ExperimentConfig, checkpoint: str) -> None:
    """``eval --checkpoint``: a prunebench checkpoint of the config's backbone whose method runs with its
    parameters and the config's ``method.params`` on top (when the config names the same method)."""
    meta = check_backbone(checkpoint, config.model.backbone)
    check_model(config.model.backbone, meta.get("method", "unknown"),
                method_params(meta, config.method.name, config.method.params))


def fetch_checkpoint(source: str, config: ExperimentConfig, tracking_uri: str) -> Path:
    """``--from``: a local path, ``s3://...`` or ``runs:/<run_id>/<path>``, checked to be a prunebench checkpoint
    of the config's backbone; a URI is downloaded, checked, and only then kept in ``<out>/inputs/``."""
    from prunebench.platform.tracking import fetch_input  # MLflow is imported by the commands that take --from

    path = fetch_input(source, Path(config.out) / "inputs", tracking_uri,
                       check=lambda path: check_backbone(path, config.model.backbone))
    log.debug("checked: %s is a %s checkpoint", path, config.model.backbone)
    return path
