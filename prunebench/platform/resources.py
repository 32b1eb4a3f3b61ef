"""GPUs: what a trial or Train worker asks Ray for, and what a worker checks before it starts.

A config whose ``device`` is ``cuda`` makes every trial ask Ray for GPUs (``--gpus-per-trial``,
fractions allowed; default 1) and Ray Train run with ``use_gpu``; a ``cpu`` config asks for none.
The flag and the config cannot disagree: ``--gpus-per-trial 0`` with ``device=cuda`` (Ray would hide
every GPU from the trial) or ``> 0`` with ``device=cpu`` (the GPU would sit idle) stops with one line.
Before anything starts, the driver checks that this machine has a GPU (without a cluster address) and,
once connected, that the cluster declares enough GPUs; a worker that was promised a GPU and sees none
stops at once with one line, never falls back to the CPU unannounced.

Testing hook: ``PRUNEBENCH_FORCE_CPU=1`` runs the model of a ``cuda`` config on the CPU inside the
workers (a loopback cluster with logical GPUs, ``ray start --num-gpus``, tests the resource requests).
"""

from __future__ import annotations

import os

import ray
import torch

from prunebench.config import ExperimentConfig
from prunebench.errors import ConfigError

FORCE_CPU_ENV = "PRUNEBENCH_FORCE_CPU"


def gpus_per_trial(config: ExperimentConfig, requested: float | None) -> float:
    """GPUs each trial asks for: ``requested``, else 1 for a ``cuda`` config and 0 for a ``cpu`` one."""
    if requested is None:
        return 1.0 if config.device == "cuda" else 0.0
    if requested < 0:
        raise ConfigError(f"--gpus-per-trial {requested}; allowed: a number >= 0 (fractions share a GPU)")
    if config.device == "cuda" and requested == 0:
        raise ConfigError("--gpus-per-trial 0 with device=cuda: Ray would hide every GPU from the trials; "
                          "allowed: a number > 0, or --set device=cpu")
    if config.device == "cpu" and requested > 0:
        raise ConfigError(f"--gpus-per-trial {requested} with device=cpu: the GPUs would sit idle; "
                          "allowed: 0, or --set device=cuda")
    return requested


def check_local_gpu(config: ExperimentConfig, address: str | None, ray: bool = True) -> None:
    """Before Ray starts: a ``cuda`` config that runs on this machine (no cluster address, or a command that never
    uses Ray) needs a GPU torch can use. On a cluster the GPUs are the nodes' (``check_cluster_gpus``)."""
    on_cluster = ray and bool(address or os.environ.get("RAY_ADDRESS"))
    if config.device != "cuda" or on_cluster or torch.cuda.is_available():
        return
    where = "--address of a Ray cluster with GPU nodes, or " if ray else ""
    raise ConfigError(f"device=cuda but this machine has no GPU that torch can use; allowed: {where}--set device=cpu")


def check_cluster_gpus(needed: float) -> None:
    """After connecting: one line unless the cluster declares at least ``needed`` GPUs (Ray would wait forever)."""
    declared = ray.cluster_resources().get("GPU", 0.0)
    if needed > 0 and declared < needed:
        raise ConfigError(f"the Ray cluster declares {declared:g} GPU(s) but a trial or worker group needs {needed:g}; "
                          "start GPU nodes first (cluster.yaml: min_workers of a GPU node type) or use device=cpu")


def worker_config(config: ExperimentConfig) -> ExperimentConfig:
    """Inside a worker: the config with the device this worker really runs on (one line if a GPU is missing)."""
    if config.device != "cuda":
        return config
    if os.environ.get(FORCE_CPU_ENV) == "1":
        return config.model_copy(update={"device": "cpu"})
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise RuntimeError(f"device=cuda but this worker sees no GPU (CUDA_VISIBLE_DEVICES={visible}); "
                           "it was promised one: check the node's driver and Ray's GPU resources")
    return config


def process_group_backend(use_gpu: bool) -> str:
    """Ray Train's collective backend: NCCL for GPU workers, gloo on the CPU (also under the testing hook)."""
    return "nccl" if use_gpu and os.environ.get(FORCE_CPU_ENV) != "1" else "gloo"
