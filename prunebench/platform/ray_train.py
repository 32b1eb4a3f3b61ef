"""Training stages on Ray Train (``TorchTrainer``, Train V2).

The workers run the same loop as the plain protocol (``training.loop.train_steps``). Every epoch
(one pass over the clips) and at the end, each worker reports its metrics and rank 0 attaches a
checkpoint (weights + step, and the loop's state: optimizer, loss scaler, random states). If a worker
dies, Ray restarts the group (``FailureConfig``) and the workers resume from the latest reported
checkpoint exactly where it was taken: with one worker, the rest of the run is that of a run that did
not stop (the same weights at the end); with several, every rank takes rank 0's random state. The final weights
are copied to the requested path as a regular prunebench checkpoint.

Without an address a local Ray starts; ``--address`` / ``RAY_ADDRESS`` joins a cluster. Storage
is a local folder or a URI (``s3://...``), given as ``storage_path``. The init checkpoint reaches the
workers through the object store (they may run on nodes that do not see the driver's disk), and so does
the driver's code version (the runtime env of ``connect``).

Testing hook: ``PRUNEBENCH_FAULT_KILL_AT_STEP=k`` with ``PRUNEBENCH_FAULT_MARKER=<file>`` makes rank 0
SIGKILL itself once, after step k (the marker records that it happened).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
from ray.train.torch import TorchConfig, TorchTrainer

from prunebench.atomic import atomic_path
from prunebench.config import ExperimentConfig, load_config
from prunebench.platform.resources import check_cluster_gpus, process_group_backend, worker_config
from prunebench.platform.resume import ray_storage
from prunebench.training.checkpoint import CODE_VERSION_ENV, code_version, read_checkpoint, save_checkpoint
from prunebench.training.loop import LoopState, StepMetrics, mean_metrics, train_steps
from prunebench.training.protocol import log_progress, prepare_stage
from prunebench.validation import to_dict

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
LOOP_STATE = "loop_state.pt"
#: every report of the run up to the checkpoint (JSON): a resumed worker still returns the whole run's reports
HISTORY = "history.json"
#: the driver's log level, handed to the workers
LOG_LEVEL_ENV = "PRUNEBENCH_LOG_LEVEL"


@dataclass(frozen=True)
class Scaling:
    """How many Train workers, on what."""

    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` / ``$RAY_ADDRESS``, or start a local Ray (all CPUs of this machine by default).

    Worker output is forwarded to the driver's stderr, so training progress shows. A local Ray runs
    its dashboard on 127.0.0.1: Train V2's placement-group cleaner needs the State API it serves
    (without it the cleaner logs a warning every second and cannot free a dead run's workers).
    The workers get the driver's code version and log level (``worker_env``); Ray's own driver lines
    follow the log level too (``-q``: warnings only).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    options = {"runtime_env": worker_env(), "logging_level": max(logging.INFO, _log_level())}
    log.debug("connecting to Ray at %s", address or "a new local instance")
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **options)


def connect_checked(address: str | None, gpus: float) -> None:
    """``connect`` and check that the cluster declares the ``gpus`` a trial or worker group needs (one line if not)."""
    connect(address)
    check_cluster_gpus(gpus)


def join_cluster_first(address: str | None, gpus: float) -> None:
    """Before a command reads or generates its data: join an existing cluster (``address`` or ``$RAY_ADDRESS``)
    and check its GPUs, so that a refusal leaves nothing behind (no generated synthetic data, no folder).

    A local Ray is not started here: it starts after the data is checked (``connect_checked``), and its
    GPUs are this machine's, which ``check_local_gpu`` checked before anything.
    """
    if address or os.environ.get("RAY_ADDRESS"):
        connect_checked(address, gpus)


def _log_level() -> int:
    return logging.getLogger("prunebench").getEffectiveLevel()


def worker_env() -> dict[str, Any]:
    """The runtime env of every Ray worker: the driver's log level (``-q`` / ``-v``) and its ``code_version()``
    (workers may run from a copy without ``.git``), the version left out in a submitted job whose runtime env
    already sets it (Ray refuses a driver that sets the same variable again)."""
    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}"))
    env = {LOG_LEVEL_ENV: logging.getLevelName(_log_level())}
    if CODE_VERSION_ENV not in ((job.get("runtime_env") or {}).get("env_vars") or {}):
        env[CODE_VERSION_ENV] = code_version()
    return {"env_vars": env}


def worker_logging() -> None:
    """Inside a Ray worker: show prunebench's lines at the driver's log level (forwarded to the driver)."""
    logger = logging.getLogger("prunebench")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get(LOG_LEVEL_ENV, "INFO"))
        logger.propagate = False  # Ray's workers have a root handler of their own: print once


@contextlib.contextmanager
def received_file(ref: ray.ObjectRef | None) -> Iterator[Path | None]:
    """The bytes the driver put in the object store as a file on this worker's node, which may not see the
    driver's disk (e.g. the init checkpoint downloaded into the head's ``<out>/inputs/``)."""
    if ref is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WEIGHTS
        path.write_bytes(ray.get(ref))
        yield path


def epoch_steps(clips: int, batch_size: int, world: int = 1) -> int:
    """Steps of one pass over ``clips`` training clips by ``world`` workers: a worker reports (and rank 0
    checkpoints) after each."""
    return max(1, clips // (batch_size * world))


def _worker(loop_config: dict[str, Any]) -> list[dict[str, Any]]:
    """One Train worker's stage; returns every report of the run (rank 0's is the run's ``return_value``)."""
    worker_logging()
    config = worker_config(load_config(loop_config["config"]))
    stage, threads = loop_config["stage"], loop_config["threads"]
    torch.set_num_threads(threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    with received_file(loop_config["init"]) as init:
        prepared = prepare_stage(config, stage, init)
    model, optim = prepared.model, prepared.optim
    start, loop_state, history = 0, None, []
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as folder:
            saved = read_checkpoint(Path(folder) / WEIGHTS)
            saved.load_into(model)
            loop_state = torch.load(Path(folder) / LOOP_STATE, map_location="cpu", weights_only=True)
            history = json.loads((Path(folder) / HISTORY).read_text())
            start = saved.meta["step"]
        log.info("rank %d resumes at step %d", rank, start)
    steps_per_epoch = epoch_steps(len(prepared.sampler), optim.batch_size, world)
    kill_at = int(os.environ.get("PRUNEBENCH_FAULT_KILL_AT_STEP", "0"))
    marker = os.environ.get("PRUNEBENCH_FAULT_MARKER")
    logger = log_progress(stage, prepared.meta["method"], optim, start)
    window: list[StepMetrics] = []

    def on_step(metrics: StepMetrics, state: LoopState) -> None:
        logger(metrics, state)
        window.append(metrics)
        if metrics.step % steps_per_epoch == 0 or metrics.step == optim.steps:
            mean = mean_metrics(window)
            report = {"step": metrics.step, "epoch": metrics.step / steps_per_epoch, "loss": mean.loss,
                      "task_loss": mean.task_loss, "prune_loss": mean.prune_loss, "keep": mean.keep,
                      "lr": metrics.lr, "seconds_per_step": mean.seconds}
            window.clear()
            history.append(report)
            if rank == 0:
                with tempfile.TemporaryDirectory() as folder:
                    save_checkpoint(Path(folder) / WEIGHTS, model,
                                    {**prepared.meta, **loop_config["meta"], "step": metrics.step})
                    torch.save(state.state_dict(), Path(folder) / LOOP_STATE)
                    (Path(folder) / HISTORY).write_text(json.dumps(history))
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
            else:
                ray.train.report(report)
        if rank == 0 and kill_at and metrics.step == kill_at and marker and not Path(marker).exists():
            Path(marker).write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)

    with logger:
        # one seed on every rank: the distributed sampler shuffles alike everywhere and each rank takes its own
        # slice (a seed per rank made the slices of different permutations overlap, and some clips unseen)
        train_steps(model, prepared.sampler, optim, config.seed, torch.device(config.device), start_step=start,
                    resume_state=loop_state, on_step=on_step, rank=rank, world=world,
                    precision=config.stage_precision(stage))
    return history


@dataclass
class StageResult:
    """A finished Ray Train stage."""

    checkpoint: Path
    history: list[dict[str, Any]]
    path: str


def train_on_ray(
    config: ExperimentConfig,
    stage: str,
    out: str | Path,
    init_checkpoint: str | Path | None = None,
    scaling: Scaling = Scaling(),
    storage_path: str | None = None,
    name: str | None = None,
    max_failures: int = 3,
    meta: dict[str, Any] | None = None,
) -> StageResult:
    """Run one stage on a ``TorchTrainer``; copy the final weights to ``out`` atomically. ``meta`` is added
    to the checkpoint's metadata (e.g. the MLflow run that trains it)."""
    storage = ray_storage(config.out, storage_path)
    init = None if init_checkpoint is None else ray.put(Path(init_checkpoint).read_bytes())  # to workers on any node
    meta = {**(meta or {}), "init_checkpoint": None if init_checkpoint is None else str(init_checkpoint)}
    run_name = name or f"{config.name}-{stage}-{config.method.name if stage == 'finetune' else 'dense'}"
    trainer = TorchTrainer(
        _worker,
        torch_config=TorchConfig(backend=process_group_backend(scaling.use_gpu)),
        train_loop_config={"config": to_dict(config), "stage": stage, "threads": scaling.cpus_per_worker,
                           "init": init, "meta": meta},
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker={"CPU": scaling.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder, atomic_path(out) as tmp:
        shutil.copyfile(Path(folder) / WEIGHTS, tmp)
    # the run's reports from rank 0: Train V2's metrics_dataframe holds only the retained checkpoints' (the last 2)
    return StageResult(Path(out), result.return_value, str(result.path))
