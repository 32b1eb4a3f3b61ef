"""Everything ``prunebench tune`` is told, checked before Ray, MLflow or the dense model start."""

from __future__ import annotations

from dataclasses import dataclass

from prunebench.config import ExperimentConfig
from prunebench.errors import ConfigError
from prunebench.platform.preflight import check_clips, check_model
from prunebench.platform.resources import gpus_per_trial
from prunebench.platform.resume import check_resumable, ray_storage
from prunebench.search_spaces.loader import SearchSpace, load_space

OBJECTIVES = ("pkr", "gmacs")


@dataclass(frozen=True)
class CheckedStudy:
    """What ``check_study`` resolved: the space, the GPUs per trial, the study's name and its Ray storage."""

    space: SearchSpace
    gpus: float
    name: str
    storage: str


def check_study(space_source: str, config: ExperimentConfig, objective: str, num_samples: int, cpus_per_trial: int,
                reports: int, gpus: float | None, name: str | None, storage_path: str | None,
                resume: bool) -> CheckedStudy:
    """Everything a study is told, checked before anything starts (and before the dense model is trained)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective}: allowed: {', '.join(OBJECTIVES)}")
    if num_samples < 1 or cpus_per_trial < 1 or reports < 1:
        raise ConfigError(f"--num-samples {num_samples} / --cpus-per-trial {cpus_per_trial} / --reports {reports}: "
                          "allowed: integers >= 1")
    space = load_space(space_source)
    if config.data.num_ref < 1:  # single-frame clips: refused if a corner of the space carries state (VPP)
        for params in space.corner_params():
            check_clips(config, check_model(config.model.backbone, space.method, params))
    study = CheckedStudy(space, gpus_per_trial(config, gpus), name or f"tune-{space.method}",
                         ray_storage(config.out, storage_path))
    if resume:
        check_resumable(study.storage, study.name)
    return study
