"""What the platform costs: Ray Train vs a bare PyTorch loop, and 1 vs 2 concurrent Tune trials.

    python benchmarks/platform_overhead.py [--steps 200 --repeats 3 --trials 8]

1. The same dense training stage (model, data, seed, steps) in this process with the plain loop
   and through Ray Train (``TorchTrainer``, 1 worker with the same threads; a local Ray started for
   the run and shut down after it), ``--repeats`` times in alternating order (bare first, then Ray
   first, ...), because this machine's speed drifts by more than the effect sought. Each run's
   steady step time is the mean over the steps after the first epoch (the first epoch warms up the
   allocator and caches; Ray's workers report one mean per epoch). Per pair: Ray ÷ bare; the summary
   is their median and range, their geometric mean with a 95 % interval, and the wall time including
   Ray's start-up. ``--idle-ray`` adds a third run to each pair, the plain loop in this process beside
   an idle Ray Train run (a local Ray, its Train controller and one worker holding the same CPUs and
   sleeping): what Ray's own processes cost a loop that uses every core, without Ray running it.
   ``--ray-task`` adds another: the plain loop inside a plain Ray task holding the same CPUs (a local
   Ray, no Train): Ray's worker process and daemons without Train's controller, reports and checkpoints.
   ``--background-load CORES`` adds another: the plain loop in this process beside a synthetic load, a
   process that burns CORES of CPU in 45-µs bursts (about as often as Ray's idle processes wake), with
   no Ray running: what that much CPU taken by others costs a loop that uses every core. Every run of the
   plain loop also reports the CPU that everything else on the machine used during its timed steps
   ("other cores": the machine's busy CPU time minus the loop process's, per second).
2. A sweep of ``--trials`` short DynamicViT fine-tune+eval trials (Ray Tune + Optuna) with 2 CPUs
   per trial (1 concurrent) vs 1 CPU per trial (2 concurrent) on this 2-core machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import prunebench  # noqa: F401  (torchvision guard before timm)
import psutil
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer
from ratios import ratio_summary

from prunebench.config import load_config
from prunebench.platform.ray_train import Scaling, connect, epoch_steps, train_on_ray
from prunebench.platform.study import run_study
from prunebench.platform.tracking import resolve_tracking_uri
from prunebench.training.loop import train_steps
from prunebench.training.protocol import load_datasets, prepare_stage, run_stage


def config_for(root: Path, steps: int, threads: int):
    return load_config("demo", {
        "out": str(root / "runs"), "data.root": str(root / "data"),
        "data.synth": {"videos": 8, "valid_videos": 2, "frames": 8, "height": 128, "width": 224, "seed": 0},
        "train.steps": steps, "train.batch_size": 4, "train.log_every": 1000,
        "finetune.steps": 10, "finetune.log_every": 1000,
        "eval.threads": threads, "eval.timing_frames": 5, "eval.warmup_frames": 1,
    })


def steps_per_epoch(config) -> int:
    """Steps of one pass over the training clips (one report of a Ray Train worker)."""
    prepared = prepare_stage(config, "train")
    return epoch_steps(len(prepared.sampler), prepared.optim.batch_size)


class LoopTime(NamedTuple):
    """One run of the training stage: mean seconds per step of the first epoch and after it, the run's wall
    seconds, and the cores that every other process used during the steps after the first epoch (None
    where not measured: Ray Train's loop runs in its worker)."""

    first_epoch: float
    steady: float
    wall: float
    other_cores: float | None


def _busy_seconds() -> float:
    """CPU seconds this machine's processes and kernel have used since boot, every core (not idle, I/O wait,
    time stolen by a hypervisor, or guest time, which the user time already holds)."""
    times = psutil.cpu_times()
    return times.user + times.system + sum(getattr(times, field, 0.0) for field in ("nice", "irq", "softirq"))


def bare(config, epoch: int) -> LoopTime:
    """The plain loop in this process."""
    begin = time.perf_counter()
    prepared = prepare_stage(config, "train")
    seconds: list[float] = []
    marks: list[tuple[float, float, float]] = []  # (wall, machine busy, this process's CPU) after the first epoch, at the end

    def on_step(metrics, state) -> None:
        seconds.append(metrics.seconds)
        if len(seconds) in (epoch, prepared.optim.steps):
            marks.append((time.perf_counter(), _busy_seconds(), time.process_time()))

    train_steps(prepared.model, prepared.sampler, prepared.optim, config.seed, torch.device("cpu"), on_step=on_step)
    (wall_0, busy_0, own_0), (wall_1, busy_1, own_1) = marks
    other = ((busy_1 - busy_0) - (own_1 - own_0)) / (wall_1 - wall_0)
    return LoopTime(statistics.fmean(seconds[:epoch]), statistics.fmean(seconds[epoch:]),
                    time.perf_counter() - begin, max(0.0, other))


def through_ray(config, threads: int, name: str) -> LoopTime:
    """The stage on Ray Train (wall seconds include Ray's start-up); ``name``: the Ray Train run's, new for every
    run (a run of an existing name resumes from its checkpoint)."""
    begin = time.perf_counter()
    connect(None, num_cpus=2)
    result = train_on_ray(config, "train", Path(config.out) / f"{name}.safetensors", scaling=Scaling(1, False, threads),
                          name=name)
    wall = time.perf_counter() - begin
    ray.shutdown()
    # each report is the mean over the steps since the previous one: weight it by their number
    steps = [r["step"] for r in result.history]
    windows = [b - a for a, b in zip(steps, steps[1:])]
    per_step = sum(w * r["seconds_per_step"] for w, r in zip(windows, result.history[1:])) / sum(windows)
    return LoopTime(result.history[0]["seconds_per_step"], per_step, wall, None)


def _idle_worker(loop_config: dict) -> None:
    """A Train worker that holds its CPUs and sleeps until the driver's stop file appears."""
    Path(loop_config["started"]).touch()
    while not Path(loop_config["stop"]).exists():
        time.sleep(0.5)


def beside_idle_ray(config, epoch: int, threads: int, name: str) -> LoopTime:
    """``bare`` in this process while a local Ray runs an idle Train run (controller + one sleeping worker)."""
    connect(None, num_cpus=2)
    folder = Path(config.out) / name
    folder.mkdir(parents=True)
    started, stop = folder / "started", folder / "stop"
    trainer = TorchTrainer(_idle_worker, train_loop_config={"started": str(started), "stop": str(stop)},
                           scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
                           run_config=ray.train.RunConfig(name=name, storage_path=str(folder / "ray_results")))
    fit = threading.Thread(target=trainer.fit)
    fit.start()
    deadline = time.monotonic() + 300
    while not started.exists():
        if not fit.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the idle Ray Train run did not start")
        time.sleep(0.5)
    try:
        return bare(config, epoch)
    finally:
        stop.touch()
        fit.join()
        ray.shutdown()


@ray.remote
def _loop_in_task(config, epoch: int, threads: int) -> LoopTime:
    torch.set_num_threads(threads)
    return bare(config, epoch)


def in_ray_task(config, epoch: int, threads: int) -> LoopTime:
    """``bare`` inside a plain Ray task holding ``threads`` CPUs of a local Ray started for the run."""
    connect(None, num_cpus=2)
    try:
        return ray.get(_loop_in_task.options(num_cpus=threads).remote(config, epoch, threads))
    finally:
        ray.shutdown()


BURST_SECONDS = 45e-6


def _burn(cores: float, stop) -> None:
    """Use ``cores`` of CPU in bursts of ``BURST_SECONDS`` of spinning, sleeping in between, until ``stop`` is set."""
    pause = BURST_SECONDS / cores - BURST_SECONDS
    scratch = bytearray(256 * 1024)  # touched in each burst, as a woken process touches its own memory
    offset = 0
    while not stop.is_set():
        until = time.perf_counter() + BURST_SECONDS
        while time.perf_counter() < until:
            scratch[offset] = (scratch[offset] + 1) & 0xFF
            offset = (offset + 4096) % len(scratch)
        time.sleep(pause)


def beside_load(config, epoch: int, cores: float) -> LoopTime:
    """``bare`` in this process while another process burns ``cores`` of CPU in short bursts (no Ray running)."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    burner = context.Process(target=_burn, args=(cores, stop), daemon=True)
    burner.start()
    try:
        return bare(config, epoch)
    finally:
        stop.set()
        burner.join()


def sweep(config, dense: Path, trials: int, cpus_per_trial: int, name: str) -> float:
    begin = time.perf_counter()
    connect(None, num_cpus=2)
    run_study("dynamicvit", config, dense, resolve_tracking_uri(None, config.out), num_samples=trials,
              name=name, cpus_per_trial=cpus_per_trial, reports=2)
    ray.shutdown()
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per run (at least two epochs: 32)")
    parser.add_argument("--repeats", type=int, default=3, help="bare / Ray Train pairs, in alternating order")
    parser.add_argument("--trials", type=int, default=8, help="trials of the sweep comparison (0: skip it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--idle-ray", action="store_true",
                        help="also time the plain loop beside an idle Ray Train run (what Ray's processes cost it)")
    parser.add_argument("--ray-task", action="store_true",
                        help="also time the plain loop inside a plain Ray task (Ray without Train's machinery)")
    parser.add_argument("--background-load", type=float, metavar="CORES",
                        help="also time the plain loop beside a process that burns CORES of CPU in short bursts")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: allowed: 1 or more")
    if args.background_load is not None and not 0 < args.background_load < 1:
        parser.error(f"--background-load {args.background_load}: allowed: more than 0 and less than 1 (cores)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = config_for(root, args.steps, args.threads)
        load_datasets(config)
        epoch = steps_per_epoch(config)
        if args.steps < 2 * epoch:
            parser.error(f"--steps {args.steps}: allowed: at least two epochs ({2 * epoch} steps); the first is warm-up")
        # the optional runs: (column, ratio column, summary line, asked for)
        extras = {"idle Ray": ("bare beside idle Ray", "idle", "Bare loop beside an idle Ray Train run ÷ bare loop alone",
                               args.idle_ray),
                  "Ray task": ("bare in a Ray task", "task", "Bare loop inside a plain Ray task ÷ bare loop alone",
                               args.ray_task),
                  "load": ("bare beside the load", "load",
                           f"Bare loop beside a synthetic load of {args.background_load} cores ÷ bare loop alone",
                           args.background_load is not None)}
        chosen = [kind for kind, (*_, wanted) in extras.items() if wanted]
        rows = []
        for repeat in range(args.repeats):
            name = f"overhead-{repeat + 1}"
            runs = {"bare": lambda: bare(config, epoch),
                    "idle Ray": lambda: beside_idle_ray(config, epoch, args.threads, f"{name}-idle"),
                    "Ray task": lambda: in_ray_task(config, epoch, args.threads),
                    "load": lambda: beside_load(config, epoch, args.background_load),
                    "Ray": lambda: through_ray(config, args.threads, name)}
            order = [kind for kind in runs if kind in ("bare", "Ray") or kind in chosen]
            if repeat % 2:
                order.reverse()
            rows.append((repeat + 1, ", ".join(order), {kind: runs[kind]() for kind in order}))
        print(f"\nTraining stage: {args.steps} steps of batch 4 at 128x224, vit_tiny + Mask2Former head, {args.threads} threads; "
              f"s/step is the mean after the first epoch ({epoch} steps)\n")
        extra_head = "".join(f" {extras[kind][0]} s/step | {extras[kind][1]} ÷ bare |" for kind in chosen)
        other_head = "".join(f" other cores: {extras[kind][1]} |" for kind in chosen)
        print(f"| pair | order | bare s/step | Ray Train s/step | Ray ÷ bare |{extra_head} first epoch: bare | first epoch: Ray "
              f"| bare wall s | Ray wall s (incl. start-up) | other cores: bare |{other_head}")
        print("|---:|---|---:|---:|---:|" + "---:|---:|" * len(chosen) + "---:|---:|---:|---:|---:|" + "---:|" * len(chosen))
        for pair, order, done in rows:
            plain, on_ray = done["bare"], done["Ray"]
            extra_cells = "".join(f" {done[kind].steady:.3f} | {done[kind].steady / plain.steady:.2f} |" for kind in chosen)
            other_cells = "".join(f" {done[kind].other_cores:.3f} |" for kind in chosen)
            print(f"| {pair} | {order} | {plain.steady:.3f} | {on_ray.steady:.3f} | {on_ray.steady / plain.steady:.2f} |{extra_cells} "
                  f"{plain.first_epoch:.3f} | {on_ray.first_epoch:.3f} | {plain.wall:.1f} | {on_ray.wall:.1f} | "
                  f"{plain.other_cores:.3f} |{other_cells}")
        print(f"\nRay Train ÷ bare loop, per step: {ratio_summary([done['Ray'].steady / done['bare'].steady for *_, done in rows])}")
        for kind in chosen:
            print(f"{extras[kind][2]}: {ratio_summary([done[kind].steady / done['bare'].steady for *_, done in rows])}")
        if args.trials < 1:
            return
        dense = run_stage(config, "train", root / "dense.safetensors")
        one = sweep(config, dense, args.trials, 2, "sweep-1x2cpu")
        two = sweep(config, dense, args.trials, 1, "sweep-2x1cpu")
        print(f"\nSweep: {args.trials} DynamicViT trials (10 fine-tune steps + evaluation each)\n")
        print("| concurrency | CPUs per trial | wall s | speedup vs 1 concurrent |")
        print("|---|---:|---:|---:|")
        print(f"| 1 | 2 | {one:.1f} | 1.00 |")
        print(f"| 2 | 1 | {two:.1f} | {one / two:.2f} |")


if __name__ == "__main__":
    main()
