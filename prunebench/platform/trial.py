"""The one trial function of ``demo``, ``tune`` and ``benchmark``: fine-tune, evaluate, report in-band.

A trial fine-tunes one method (its parameters and seed in a ``TrialSpec``) from the dense
checkpoint with the protocol's ``finetune`` schedule, reporting every logging window to Tune: the
window's mean task loss and stage keeps, and the same measured on the fixed probe of training clips
(``training.probe``), from which the convergence verdict is judged. It then evaluates the model it holds in
memory and hands everything to Tune in its final report: the evaluation's metrics, the
convergence verdict, and a Ray checkpoint folder with the weights, ``results.json`` and the
keep-mask picture. Ray persists that checkpoint to the run's storage (the output folder, or a
cloud URI); the driver logs the report and the checkpoint to MLflow. Nothing the driver needs is
read from the worker's disk.

What a seed controls: the clip order of fine-tuning, the initialisation of the selectors, the
Gumbel noise of training, and (as ``eval.seed``) the selectors' noise at inference.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from prunebench.atomic import write_json
from prunebench.config import ExperimentConfig, MethodConfig, load_config
from prunebench.evaluation.plots import keep_mask_figure
from prunebench.evaluation.vis_eval import evaluate
from prunebench.platform.ray_train import worker_logging
from prunebench.platform.resources import worker_config
from prunebench.platform.trial_spec import Describe, TrialSpec
from prunebench.training.checkpoint import save_checkpoint
from prunebench.training.convergence import Window
from prunebench.training.loop import LoopState, StepMetrics, mean_metrics, train_steps
from prunebench.training.probe import Probe, ProbeReading
from prunebench.training.protocol import prepare_stage
from prunebench.validation import to_dict

WEIGHTS = "model.safetensors"
RESULTS = "results.json"
KEEP_MASKS = "keep_masks.png"


def window_metrics(mean: StepMetrics) -> dict[str, float]:
    """The numbers of one logging window, as reported to Tune and logged to MLflow (with the step)."""
    return {"task_loss": mean.task_loss, "loss": mean.loss, "prune_loss": mean.prune_loss, "keep": mean.keep,
            "lr": mean.lr, **{f"keep_{stage}": value for stage, value in mean.stage_keep.items()}}


def probe_metrics(reading: ProbeReading) -> dict[str, float]:
    """The probe's reading of one window (what the convergence verdict reads), logged beside the window's means."""
    return {"probe_task_loss": reading.task_loss, **{f"probe_keep_{stage}": v for stage, v in reading.stage_keep.items()}}


def run_trial(config: ExperimentConfig, spec: TrialSpec, dense: str, threads: int) -> None:
    """Inside a Tune trial: fine-tune ``spec`` from ``dense`` (unless it is the dense reference), report each
    window, evaluate, report once more.

    No FPS here: trials share the machine, so their timings would not be comparable; the driver
    times every model afterwards, one at a time.
    """
    worker_logging()
    torch.set_num_threads(threads)
    config = worker_config(config)
    # evaluate on the trial's own CPUs: more threads would oversubscribe cores shared with other trials
    config = config.model_copy(update={"seed": spec.seed, "method": MethodConfig(name=spec.method, params=spec.params),
                                       "eval": config.eval.model_copy(update={"threads": threads, "seed": spec.seed})})
    context = ray.get_runtime_context()
    node, granted = context.get_node_id(), json.dumps(context.get_assigned_resources(), sort_keys=True)
    prepared = prepare_stage(config, "finetune", dense)
    method = prepared.model.backbone.method
    targets = {f"b{p}": t for p, t in method.stage_targets().items() if p in method.learned_stages()}
    steps, every = prepared.optim.steps, max(1, prepared.optim.log_every)
    window: list[StepMetrics] = []
    history: list[Window] = []
    last: dict[str, float] = {}
    device = torch.device(config.device)
    probe = Probe(prepared.sampler, config.convergence.probe_clips, prepared.optim.batch_size) if spec.finetune else None

    def on_step(metrics: StepMetrics, _state: LoopState) -> None:
        window.append(metrics)
        if metrics.step % every and metrics.step != steps:
            return
        mean = mean_metrics(window)
        window.clear()
        reading = probe.measure(prepared.model, device, config.precision)
        history.append(Window(mean.step, reading.task_loss, {k: v for k, v in reading.stage_keep.items() if k in targets}))
        last.clear()
        last.update({**window_metrics(mean), **probe_metrics(reading)})
        if metrics.step < steps:  # the last window travels with the final report
            tune.report({**last, "step": metrics.step, "node_id": node})

    convergence = None
    if spec.finetune:
        train_steps(prepared.model, prepared.sampler, prepared.optim, config.seed, device, on_step=on_step,
                    precision=config.precision)
        verdict = config.convergence.assess(history, targets, steps)
        convergence = {"converged": verdict.converged, "reasons": list(verdict.reasons),
                       "final_keep": verdict.final_keep, "targets": targets, "loss_change": verdict.loss_change}
    else:
        steps = 0
    evaluation = evaluate(prepared.model, prepared.valid, config.eval, config.data.max_size, config.device, timing=False,
                          precision=config.precision)
    metrics = {**evaluation.metrics, "method": spec.method, "params": to_dict(method.params),
               "dataset_sha256": prepared.valid.sha256}
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(Path(folder) / WEIGHTS, prepared.model, {**prepared.meta, "seed": spec.seed})
        write_json(Path(folder) / RESULTS, evaluation.results)
        blocks = sorted({0, *method.positions, prepared.model.backbone.depth - 1})
        keep_mask_figure(evaluation.examples, blocks, Path(folder) / KEEP_MASKS, title=f"{spec.label} {spec.params}")
        tune.report({**last, "step": steps, "node_id": node, "resources": granted, "evaluated": True, "AP": metrics["AP"] or 0.0,
                     "pkr": metrics["pkr"], "gmacs": metrics["gmacs"], "metrics": json.dumps(metrics),
                     "convergence": json.dumps(convergence)},
                    checkpoint=tune.Checkpoint.from_directory(folder))


def trial_function(config: dict[str, Any], experiment: dict[str, Any], describe: Describe, dense: bytes,
                   threads: int) -> None:
    """The Tune function trainable of every sweep: ``dense`` arrives through Ray's object store
    (``tune.with_parameters``), so a trial on any node reads the same checkpoint, not the driver's disk."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WEIGHTS
        path.write_bytes(dense)
        run_trial(load_config(experiment), describe(config), str(path), threads)


def final_report(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """``(metrics, convergence)`` of a trial's final report (convergence None for the dense reference);
    None if the trial stopped before evaluating."""
    if not result.get("evaluated"):
        return None
    return json.loads(result["metrics"]), json.loads(result["convergence"])
