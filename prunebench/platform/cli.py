"""``prunebench``: one console script with subcommands.

Every subcommand has ``--help``; with ``--json`` it prints exactly one JSON object on stdout (logs
go to stderr). Bad input ends with one line on stderr naming the bad value and what is allowed,
and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import yaml
from tqdm.contrib.logging import logging_redirect_tqdm

from prunebench import __version__
from prunebench.errors import ConfigError

Handler = Callable[[argparse.Namespace], dict[str, Any]]


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["rho=0.7", "positions=[3,6,9]"]`` → ``{"rho": 0.7, "positions": [3, 6, 9]}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects PARAM=VALUE, got '{item}'")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = " ".join(str(getattr(error, "problem", None) or "syntax error").split())
            raise ConfigError(f"--set {item}: the value is not valid YAML ({problem})") from None
    return out


def _add_flops(sub: argparse._SubParsersAction) -> None:
    from typing import get_args

    from prunebench.models.registry import BACKBONES, AdapterName

    p = sub.add_parser(
        "flops",
        help="count the backbone's GMACs per frame on the executed inference graph",
        description=(
            "Count the backbone's cost per frame (batch 1) on the executed inference graph, in GMACs "
            "(multiply-accumulates, fvcore convention: LayerNorm 5 per element; GFLOPs = 2 x GMACs). "
            "Methods whose kept count depends on the image (vpp, svit) need --data."
        ),
    )
    p.add_argument("--backbone", default="vit_small", help=f"one of {', '.join(sorted(BACKBONES))}")
    p.add_argument("--method", default="dense", help="a registered pruning method")
    p.add_argument("--adapter", default="none", choices=get_args(AdapterName),
                   help="none (plain ViT) or vit_adapter (ViT-Adapter around it, counted in gmacs and reported "
                        "alone as gmacs_adapter, adapter_params)")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="PARAM=VALUE",
                   help="a method parameter, e.g. --set rho=0.7 (repeatable)")
    p.add_argument("--img-size", nargs=2, type=int, default=[224, 224], metavar=("H", "W"))
    p.add_argument("--data", default=None, metavar="DIR", help="a YouTube-VIS folder to average over (frames resized to --img-size)")
    p.add_argument("--split", default="valid", help="split of --data (default: valid)")
    p.add_argument("--max-frames", type=int, default=200, help="frames of --data to count at most")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the selectors' noise")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_flops)


def _run_flops(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.platform.preflight import check_model

    params = parse_assignments(args.params)
    check_model(args.backbone, args.method, params)
    if args.max_frames < 1:
        raise ConfigError(f"--max-frames {args.max_frames}: allowed: an integer >= 1")

    from prunebench.evaluation.cost import measure_flops  # the model: once the inputs passed

    return measure_flops(
        backbone=args.backbone,
        method=args.method,
        params=params,
        img_size=tuple(args.img_size),
        data=args.data,
        seed=args.seed,
        split=args.split,
        max_frames=args.max_frames,
        adapter=args.adapter,
    )


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value, e.g. --set train.steps=50 (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_data(sub: argparse._SubParsersAction) -> None:
    from typing import get_args

    from prunebench.data.synth import HueMode, SynthSpec

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    p = data.add_parser("synth", help="write a synthetic YouTube-VIS-format dataset (train + valid)",
                        description="Write synthetic videos in the YouTube-VIS layout; the same arguments give byte-identical files.")
    defaults = SynthSpec()
    p.add_argument("out", help="output folder (must be new or empty, unless --overwrite)")
    p.add_argument("--videos", type=int, default=defaults.videos, help="train videos")
    p.add_argument("--valid-videos", type=int, default=defaults.valid_videos)
    p.add_argument("--frames", type=int, default=defaults.frames, help="frames per video")
    p.add_argument("--height", type=int, default=defaults.height)
    p.add_argument("--width", type=int, default=defaults.width)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--scene-cut-prob", type=float, default=defaults.scene_cut_prob)
    p.add_argument("--hue-mode", choices=get_args(HueMode), default=defaults.hue_mode,
                   help="category: each category its own hue range; shared: all categories draw from every hue")
    p.add_argument("--radius-range", nargs=2, type=float, default=defaults.radius_range, metavar=("LOW", "HIGH"),
                   help="object radius as a fraction of the short side (default: %(default)s)")
    p.add_argument("--max-objects", type=int, default=defaults.max_objects, metavar="N", help="objects per video: 1..N")
    p.add_argument("--camera-motion", type=float, default=defaults.camera_motion,
                   help="mean camera speed in pixels per frame; moves the whole scene (default: 0, a still camera)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--workers", type=int, default=None,
                   help="processes drawing videos (default: one per CPU; the files do not depend on it)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_synth)
    _add_split(data)


def _run_synth(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.data.synth import SynthSpec, generate
    from prunebench.validation import validated

    options = {name: getattr(args, name) for name in SynthSpec.model_fields}
    spec = validated(SynthSpec, {**options, "radius_range": tuple(args.radius_range)},
                     name=lambda loc: "--" + str(loc[0]).replace("_", "-"))
    return generate(args.out, spec, overwrite=args.overwrite, workers=args.workers)


def _add_split(data: argparse._SubParsersAction) -> None:
    from prunebench.data.split import SplitSpec

    defaults = SplitSpec()
    p = data.add_parser("split", help="hold out videos of a split (train) as a validation split with ground truth",
                        description="Write ROOT/annotations/instances_<name>-train.json (the videos that stay) and "
                                    "instances_<name>.json (the held-out videos), both reading the frames of "
                                    "ROOT/<from-split>/JPEGImages/ (nothing is copied), and ROOT/splits/<name>.json "
                                    "(video ids, seed, sha256 of each file). The same seed gives the same files.")
    p.add_argument("root", metavar="ROOT", help="a YouTube-VIS folder (annotations/instances_<split>.json, <split>/JPEGImages/)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--valid-videos", type=int, metavar="N", help="hold out N videos")
    size.add_argument("--valid-fraction", type=float, metavar="F", help="hold out round(F x videos) videos, 0 < F < 1")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the held-out sample (default: %(default)s)")
    p.add_argument("--from-split", default=defaults.from_split, help="the split to divide (default: %(default)s)")
    p.add_argument("--name", default=defaults.name, help="the held-out split's name; the rest is <name>-train (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing split of that name")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_split)


def _run_split(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.data.split import SplitSpec, split_dataset

    spec = SplitSpec(valid_videos=args.valid_videos, valid_fraction=args.valid_fraction, seed=args.seed,
                     from_split=args.from_split, name=args.name, overwrite=args.overwrite)
    return split_dataset(args.root, spec)


def _add_metrics(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="score a YouTube-VIS results file",
                       description="Video AP (YouTube-VIS rules) and frame-level COCO mAP of RESULTS against GT; "
                                   "percent, null = undefined. RESULTS is checked first (one line and exit 2 for "
                                   "anything malformed): a list of {video_id, category_id, score, segmentations}, per "
                                   "frame null, an RLE (string or run-length counts) or polygons.")
    p.add_argument("gt", metavar="GT.json", help="YouTube-VIS annotation file")
    p.add_argument("results", metavar="RESULTS.json", help="results in the official format (a list of tracks)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_metrics)


def _run_metrics(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.data.ytvis import Annotations
    from prunebench.evaluation.vis_metrics import load_results, score_results

    annotations = Annotations(args.gt)
    results = load_results(args.results)
    return score_results(annotations.ground_truth(), results, source=args.results, notes=annotations.warnings)


def _add_gpus_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs each trial asks Ray for (fractions share a GPU; default: 1 with device=cuda, 0 with cpu)")


def _add_platform_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db)")


def _add_training(sub: argparse._SubParsersAction) -> None:
    for stage, text in (("train", "dense training (stage 1 of the protocol) on Ray Train"),
                        ("finetune", "sparse fine-tuning of the configured method from a dense checkpoint, on Ray Train")):
        p = sub.add_parser(stage, help=text, description=text + ". Reports metrics and a checkpoint every epoch; "
                           "a dead worker resumes from the last one.")
        _add_config_args(p)
        _add_platform_args(p)
        if stage == "finetune":
            p.add_argument("--from", dest="init", required=True, metavar="CKPT",
                           help="the dense checkpoint: a path, s3://... or runs:/<run_id>/checkpoint/model.safetensors")
        p.add_argument("--out", default=None, help="checkpoint path (default: <out>/<dense|method>.safetensors)")
        p.add_argument("--workers", type=int, default=1, help="Ray Train workers")
        p.add_argument("--cpus-per-worker", type=int, default=None, help="CPUs (and torch threads) per worker (default: eval.threads)")
        p.add_argument("--gpu", action="store_true", help="one GPU per worker (implied by device=cuda; refused with device=cpu)")
        p.add_argument("--storage-path", default=None, help="Ray Train storage: a folder or URI (default: <out>/ray_results)")
        p.add_argument("--max-failures", type=int, default=3, help="worker-group restarts allowed")
        p.set_defaults(handler=_run_train, stage=stage)


def _run_train(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.config import load_config
    from prunebench.platform import preflight
    from prunebench.platform.tracking import resolve_tracking_uri

    config = load_config(args.config, parse_assignments(args.overrides))
    finetune = args.stage == "finetune"
    if finetune:
        preflight.check_finetune(config)  # the method, its parameters and the clips it needs
    preflight.check_experiment(config, args.address)
    if args.workers < 1 or (args.cpus_per_worker is not None and args.cpus_per_worker < 1):
        raise ConfigError(f"--workers {args.workers} / --cpus-per-worker {args.cpus_per_worker}: allowed: integers >= 1")
    if args.gpu and config.device != "cuda":
        raise ConfigError("--gpu with device=cpu: the GPU would sit idle; allowed: --set device=cuda, or no --gpu")
    uri = resolve_tracking_uri(args.tracking_uri, config.out)
    init = preflight.fetch_checkpoint(args.init, config, uri) if finetune else None

    from prunebench.platform.ray_train import Scaling
    from prunebench.platform.runs import train_stage_logged

    scaling = Scaling(args.workers, config.device == "cuda", args.cpus_per_worker or config.eval.threads)
    return train_stage_logged(config, args.stage, args.out, init, scaling, args.storage_path,
                              args.address, uri, args.max_failures)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="full evaluation of a checkpoint; writes results.json and metrics.json")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--out", default=None, help="folder for results.json / metrics.json (default: <out>/eval/<method>)")
    p.add_argument("--no-timing", action="store_true", help="skip the FPS measurement")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db)")
    p.set_defaults(handler=_run_eval)


def _run_eval(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.config import load_config
    from prunebench.platform.preflight import check_evaluated, check_experiment

    config = load_config(args.config, parse_assignments(args.overrides))
    check_experiment(config, ray=False)
    check_evaluated(config, args.checkpoint)

    from prunebench.platform.runs import evaluate_logged  # the model, MLflow: once the inputs passed

    return evaluate_logged(config, args.checkpoint, args.out, timing=not args.no_timing, tracking_uri=args.tracking_uri)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="batch-1 latency of dense vs every pruning method on real frames",
                       description="Time the backbone (batch 1, the config's eval.threads and precision) of the dense "
                                   "model and of every method at the preset for --target on frames of the valid split, "
                                   "in video order; random weights, dynamic selectors calibrated to their targets "
                                   "first.")
    _add_config_args(p)
    p.add_argument("--target", type=float, default=0.40, help="goal PKR of the method presets (0.55 or 0.40)")
    p.add_argument("--frames", type=int, default=30, help="timed frames (>= 30 for reported numbers)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--calibration-steps", type=int, default=20,
                   help="bisection halvings of each dynamic stage's keep threshold (0: no calibration)")
    p.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> dict[str, Any]:
    import itertools

    import torch

    from prunebench.config import load_config
    from prunebench.models.presets import params_for_target, pruning_methods
    from prunebench.platform.preflight import check_model
    from prunebench.precision import check_precision

    config = load_config(args.config, parse_assignments(args.overrides))
    for method in pruning_methods():
        check_model(config.model.backbone, method, params_for_target(method, args.target))
    check_precision(config.precision, "cpu")  # bench times on the CPU whatever the config's device
    if args.frames < 1 or args.warmup < 0:
        raise ConfigError(f"--frames {args.frames} / --warmup {args.warmup}: allowed: frames >= 1, warmup >= 0")
    if args.calibration_steps < 0:
        raise ConfigError(f"--calibration-steps {args.calibration_steps}: allowed: an integer >= 0")

    from prunebench.data.pipeline import cycled_frames  # the data and the models: once the inputs passed
    from prunebench.evaluation.bench import compare, preset_model
    from prunebench.training.protocol import load_datasets

    _, valid = load_datasets(config, need=("valid",))
    torch.set_num_threads(config.eval.threads)
    frames = list(itertools.islice(cycled_frames(valid.videos, config.data.max_size), args.frames + args.warmup))
    calibration = [frames[0][1], *(f for _, f in itertools.takewhile(lambda pair: not pair[0], frames[1:4]))]
    models = {m: preset_model(config.model.backbone, m, args.target, calibration, args.calibration_steps, config.seed,
                              config.model.adapter)
              for m in ["dense", *pruning_methods()]}
    rows = compare(models, frames, args.warmup, config.precision)
    return {**rows, "settings": {"backbone": config.model.backbone, "adapter": config.model.adapter,
                                 "precision": config.precision, "target": args.target, "frames": args.frames,
                                 "warmup": args.warmup, "threads": config.eval.threads,
                                 "frame_size": list(frames[0][1].shape[-2:]), "unit": "GMACs (multiply-accumulates)"}}


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="Ray Tune + Optuna study over a method's search space",
                       description="Multi-objective study (maximise AP, minimise PKR or GMACs): every trial fine-tunes "
                                   "from the dense checkpoint and evaluates; OptunaSearch (NSGA-II) with a persistent "
                                   "storage, ASHA early stopping on the training loss, one MLflow child run per trial.")
    p.add_argument("space", help="a search-space YAML, or a shipped one: vpp, dynamicvit, tps, svit, evit, tome")
    p.add_argument("--config", default="demo", help="experiment preset or YAML (default: demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    p.add_argument("--from", dest="init", default=None, metavar="CKPT",
                   help="the dense checkpoint: a path, s3://... or runs:/<run_id>/checkpoint/model.safetensors "
                        "(default: the config's dense model from the dense cache, trained once)")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--objective", default="pkr", help="what to minimise beside maximising AP: pkr or gmacs")
    p.add_argument("--name", default=None, help="study name = MLflow experiment (default: tune-<method>)")
    p.add_argument("--resume", action="store_true", help="continue the study NAME whose driver died")
    p.add_argument("--cpus-per-trial", type=int, default=1)
    _add_gpus_arg(p)
    p.add_argument("--reports", type=int, default=4, help="training-loss reports per trial (ASHA rungs)")
    p.add_argument("--storage-path", default=None, help="Ray storage for trials and checkpoints: a folder or URI "
                                                        "(default: <out>/ray_results)")
    _add_platform_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_tune)


def _run_tune(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.config import load_config
    from prunebench.platform import preflight
    from prunebench.platform.study_checks import check_study
    from prunebench.platform.tracking import resolve_tracking_uri

    config = load_config(args.config, parse_assignments(args.overrides))
    preflight.check_experiment(config, args.address)  # the trials' method comes from the space
    check_study(args.space, config, args.objective, args.num_samples, args.cpus_per_trial, args.reports,
                args.gpus_per_trial, args.name, args.storage_path, args.resume)  # before the dense model is trained
    uri = resolve_tracking_uri(args.tracking_uri, config.out)
    if args.init is not None:
        dense = str(preflight.fetch_checkpoint(args.init, config, uri))
    else:
        from prunebench.platform.ray_train import connect
        from prunebench.platform.runs import cached_dense
        from prunebench.platform.tracking import Tracker
        from prunebench.training.protocol import load_datasets

        load_datasets(config)  # bad or empty splits stop before Ray starts
        connect(args.address)
        dense = str(cached_dense(config, Tracker(uri), None, uri, args.address).checkpoint)
    from prunebench.platform.study import run_study

    return run_study(args.space, config, dense, uri,
                     num_samples=args.num_samples, objective=args.objective, name=args.name, resume=args.resume,
                     address=args.address, cpus_per_trial=args.cpus_per_trial, reports=args.reports, seed=config.seed,
                     gpus=args.gpus_per_trial, storage_path=args.storage_path)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="leaderboard + Pareto report from MLflow",
                       description="Read the evaluation runs from MLflow once and write leaderboard.md, "
                                   "leaderboard.parquet, Pareto-front PNGs (with hypervolumes), the per-block density "
                                   "plot, the IoI table and one self-contained report.html.")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: all)")
    p.add_argument("--out", required=True, help="folder for the report files")
    p.add_argument("--goals", "--targets", dest="targets", default="0.55,0.40",
                   help="goal PKRs the leaderboard compares methods at, comma-separated")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_report)


def _report_store(explicit: str | None, out: str) -> str:
    """The store ``report`` reads: ``--tracking-uri``, ``$MLFLOW_TRACKING_URI`` or ``<out>/mlflow.db``, checked to
    exist and answer (see ``platform/stores.py``: reading creates no store and waits on no dead server)."""
    from prunebench.platform.stores import check_existing_store

    if explicit:
        named, uri = f"--tracking-uri {explicit}", explicit
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
        named = f"MLFLOW_TRACKING_URI={uri}"
    else:
        db = Path(out) / "mlflow.db"
        if not db.is_file():
            raise ConfigError(f"no MLflow store: pass --tracking-uri or set MLFLOW_TRACKING_URI ({db} does not exist)")
        uri = named = f"sqlite:///{db.resolve()}"
    check_existing_store(uri, named)
    return uri


def _run_report(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.atomic import check_folder_target

    try:
        targets = tuple(float(t) for t in args.targets.split(","))
    except ValueError:
        raise ConfigError(f"--goals {args.targets}: allowed: comma-separated PKR fractions, e.g. 0.55,0.40") from None
    if not all(0 < t < 1 for t in targets):
        raise ConfigError(f"--goals {args.targets}: allowed: fractions in (0, 1)")
    uri = _report_store(args.tracking_uri, args.out)
    check_folder_target(args.out, "--out")
    from prunebench.platform.runs import report_logged  # Ray and MLflow: imported once the inputs passed

    result = report_logged(uri, args.out, args.experiment, targets)
    print(result.pop("markdown"), file=sys.stderr if args.json else sys.__stdout__, flush=True)
    return result


def _add_rescore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rescore", help="score the logged predictions of a run's evaluations again (this evaluator)",
                       description="Score the predictions (results.json) logged on every finished evaluation run of an "
                                   "MLflow experiment again, with this version's evaluator, against the config's valid "
                                   "split (the same data: its hash must match the runs'), and log the scores that changed on "
                                   "each run (video AP family, frame mAP, per-video AP; the old values stay in the "
                                   "metric history). No model is run. Then `prunebench report` gives the corrected "
                                   "leaderboard.")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="the run's output folder (default: the config's out): its "
                                               "mlflow.db, and its data for a synthetic preset")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the config's name)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db); never created")
    p.set_defaults(handler=_run_rescore)


def _run_rescore(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.config import load_config
    from prunebench.data.ytvis import YTVISDataset

    config = load_config(args.config, _output_overrides(args.config, parse_assignments(args.overrides), args.out))
    valid = YTVISDataset(config.data.root, config.data.valid_split)  # reads only: never generates data
    valid.check_not_empty("data.valid_split")
    uri = _report_store(args.tracking_uri, config.out)

    from prunebench.platform.rescore import rescore  # MLflow: once the inputs passed

    result = rescore(uri, args.experiment or config.name, valid)
    print(result.pop("table"), file=sys.stderr if args.json else sys.__stdout__, flush=True)
    return result


def _output_overrides(preset: str, overrides: dict[str, Any], out: str | None) -> dict[str, Any]:
    """``--out``: the config's ``out``, and its ``data.root`` too for a synthetic preset (generated data lives with
    the run) unless ``--set data.root`` names it."""
    from prunebench.config import load_config

    if out is None:
        return overrides
    overrides = {**overrides, "out": out}
    if "data.root" not in overrides and load_config(preset).data.synth is not None:
        overrides["data.root"] = f"{out}/data"
    return overrides


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="the leaderboard run: cached dense model, methods x keep settings x seeds, CIs",
                       description="Train (or reuse from the cache) the dense model, fine-tune every method at every keep "
                                   "setting with every seed as Ray Tune trials from the same dense checkpoint, evaluate, "
                                   "time every model one at a time, and report AP at the goal PKRs with 95 %% confidence "
                                   "intervals, ΔAP against dense and random, significance against VPP and convergence. "
                                   "Presets: benchmark-cpu (this kind of machine, at most 2 hours), benchmark-tiny "
                                   "(minutes, the test preset), paper-tiny / paper-small (GPU).")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="output folder (default: the config's out)")
    p.add_argument("--resume", action="store_true", help="continue the benchmark whose driver died")
    _add_gpus_arg(p)
    p.add_argument("--storage-path", default=None, help="Ray storage for trials and checkpoints: a folder or URI "
                                                        "(default: <out>/ray_results)")
    _add_platform_args(p)
    p.set_defaults(handler=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.config import load_config
    from prunebench.platform.benchmark_grid import check_benchmark
    from prunebench.platform.preflight import check_experiment

    overrides = _output_overrides(args.config, parse_assignments(args.overrides), args.out)
    if args.gpus_per_trial is not None:
        overrides["benchmark.gpus_per_trial"] = args.gpus_per_trial
    config = load_config(args.config, overrides)
    check_experiment(config, args.address)
    specs = check_benchmark(config, args.resume, args.storage_path)

    from prunebench.platform.benchmark import run_benchmark  # Ray, MLflow and the model: once the inputs passed

    result = run_benchmark(config, specs, resume=args.resume, tracking_uri=args.tracking_uri, address=args.address,
                           storage_path=args.storage_path)
    print(result.pop("table"), file=sys.stderr if args.json else sys.__stdout__, flush=True)
    return result


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on embedded defaults: synthetic data, dense training, every method at 55 %% and 40 %% PKR, evaluation, table",
                       description="Generate synthetic videos, train the dense model, fine-tune VPP, DynamicViT, TPS and SViT "
                                   "at target PKR 0.55 and 0.40 from it, evaluate everything and print the table.")
    p.add_argument("--out", default="prunebench-out/demo", help="output folder (data, checkpoints, evaluations)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value of the embedded demo preset, e.g. --set train.steps=100")
    _add_gpus_arg(p)
    _add_platform_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.config import load_config
    from prunebench.platform.benchmark_grid import demo_specs
    from prunebench.platform.preflight import check_experiment
    from prunebench.platform.resources import gpus_per_trial

    overrides = {"out": args.out, "data.root": f"{args.out}/data", **parse_assignments(args.overrides)}
    if args.gpus_per_trial is not None:
        overrides["benchmark.gpus_per_trial"] = args.gpus_per_trial
    config = load_config("demo", overrides)
    check_experiment(config, args.address)
    gpus_per_trial(config, config.benchmark.gpus_per_trial)
    specs = demo_specs(config)

    from prunebench.platform.runs import run_demo  # Ray, MLflow and the model: once the inputs passed

    result = run_demo(config, specs, args.tracking_uri, args.address)
    print(result.pop("table"), file=sys.stderr if args.json else sys.__stdout__, flush=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser."""
    parser = _Parser(prog="prunebench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"prunebench {__version__}")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors (no progress)")
    level.add_argument("-v", "--verbose", action="store_true", help="prunebench's debug lines too")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_data(sub)
    _add_flops(sub)
    _add_metrics(sub)
    _add_training(sub)
    _add_eval(sub)
    _add_bench(sub)
    _add_tune(sub)
    _add_benchmark(sub)
    _add_report(sub)
    _add_rescore(sub)
    _add_demo(sub)
    return parser


def _print_human(result: dict[str, Any]) -> None:
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        print(f"{key:>18}: {value}")


def configure_logging(quiet: bool, verbose: bool) -> None:
    """Log lines on stderr: INFO and up (progress included); ``-q``: warnings and errors only; ``-v``: prunebench's
    DEBUG lines too (other libraries stay at INFO)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        logging.getLogger("prunebench").setLevel(logging.DEBUG)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunebench`` console script."""
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    # prunebench draws its own progress; MLflow's download bars would break the one-line stderr of a refusal
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    stdout = sys.stdout
    try:
        # stdout carries only the result (Ray prints notices); log lines pass above a progress bar
        with contextlib.redirect_stdout(sys.stderr), logging_redirect_tqdm():
            result = args.handler(args)
    except ConfigError as error:
        print(f"prunebench {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result), file=stdout)
    elif args.command not in ("demo", "report", "benchmark", "rescore"):
        with contextlib.redirect_stdout(stdout):
            _print_human(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
