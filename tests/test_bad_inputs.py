"""Bad inputs, command by command: each exits 2 with one line on stderr and no traceback, within 10 s, and
writes nothing (its output folder stays absent, its test folder and the dense cache unchanged).

``CASES`` is the table: one row per input, named after what it feeds in, with the command line (``$name``
placeholders for the fixture files below) and a fragment of the one line it must print. A new case
is one more row. Every command runs in a fresh interpreter, as a user runs it; none of them may reach Ray,
MLflow or training. "Within 10 s" is the command's own CPU time (about 6 s, nearly all imports), so that a
busy machine does not fail it; a command still running after 60 s is killed and fails.
"""

import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

import pytest
import timm
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

import prunebench
from platform_helpers import TINY, write_config
from prunebench.config import load_config
from prunebench.data.synth import SynthSpec, generate
from prunebench.platform.cli import main
from prunebench.platform.tracking import Tracker, resolve_tracking_uri
from prunebench.training.checkpoint import save_checkpoint
from prunebench.training.protocol import build_model

LIMIT_S = 10.0  # CPU seconds a refusal may take
HANG_S = 60.0  # wall seconds after which a command is killed
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@dataclass(frozen=True)
class Case:
    """One bad input: the command line (``$`` placeholders: ``Fixtures``, ``config``, ``out``, ``missing``), a fragment
    of its error line, and whether it only makes sense on a machine without a GPU."""

    args: tuple[str, ...]
    says: str
    without_gpu: bool = False


#: name (what it feeds in) -> the case
CASES: dict[str, Case] = {
    # train
    "train_unknown_backbone": Case(("train", "$config", "--set", "model.backbone=vit_huge"), "got 'vit_huge'"),
    "train_pretrained_missing": Case(("train", "$config", "--set", "model.pretrained=$missing"), "pretrained weights not found"),
    "train_pretrained_not_a_weights_file": Case(("train", "$config", "--set", "model.pretrained=$garbage"),
                                                "cannot read pretrained weights"),
    "train_pretrained_of_other_shapes": Case(("train", "$config", "--set", "model.pretrained=$pretrained_small"),
                                             "not a vit_tiny checkpoint"),
    "train_cuda_without_gpu": Case(("train", "$config", "--set", "device=cuda"), "has no GPU", without_gpu=True),
    "train_gpu_flag_with_cpu_device": Case(("train", "$config", "--gpu"), "--gpu with device=cpu"),
    "train_gpu_flag_without_gpu": Case(("train", "$config", "--gpu", "--set", "device=cuda"), "has no GPU",
                                       without_gpu=True),
    "train_zero_workers": Case(("train", "$config", "--workers", "0"), "--workers 0"),
    "train_unknown_precision": Case(("train", "$config", "--set", "precision=fp64"),
                                    "precision must be one of 'fp32', 'bf16', 'fp16', got 'fp64'"),
    "train_fp16_on_cpu": Case(("train", "$config", "--set", "precision=fp16"), "precision=fp16 with device=cpu"),
    # finetune
    "finetune_without_method": Case(("finetune", "$config", "--from", "$dense"), "finetune needs a pruning method"),
    "finetune_with_method_dense": Case(("finetune", "$config", "--from", "$dense", "--set", "method.name=dense"),
                                       "finetune needs a pruning method"),
    "finetune_temporal_method_on_single_frames": Case(("finetune", "$config", "--from", "$dense", "--set",
                                                       "method.name=vpp", "--set", "data.num_ref=0"),
                                                      "data.num_ref=0: vpp carries state from frame to frame"),
    "finetune_unknown_method": Case(("finetune", "$config", "--from", "$dense", "--set", "method.name=vppp"),
                                    "unknown method 'vppp'"),
    "finetune_unknown_method_param": Case(("finetune", "$config", "--from", "$dense", "--set", "method.name=vpp",
                                           "--set", "method.params={foo: 1}"), "unknown key 'method.params.foo'"),
    "finetune_method_param_out_of_range": Case(("finetune", "$config", "--from", "$dense", "--set",
                                                "method.name=dynamicvit", "--set", "method.params={rho: 1.5}"), "rho=1.5"),
    "finetune_cuda_without_gpu": Case(("finetune", "$config", "--from", "$dense", "--set", "method.name=tps",
                                       "--set", "device=cuda"), "has no GPU", without_gpu=True),
    "from_missing_file": Case(("finetune", "$config", "--from", "$missing", "--set", "method.name=tps"), "no such file"),
    "from_path_that_is_not_a_checkpoint": Case(("finetune", "$config", "--from", "$garbage", "--set", "method.name=tps"),
                                               "not a safetensors checkpoint"),
    "from_safetensors_of_another_program": Case(("finetune", "$config", "--from", "$pretrained_small", "--set",
                                                 "method.name=tps"), "not a prunebench checkpoint"),
    "from_checkpoint_of_other_backbone": Case(("finetune", "$config", "--from", "$small", "--set", "method.name=tps"),
                                              "a checkpoint of backbone vit_small"),
    "from_folder": Case(("finetune", "$config", "--from", "$data", "--set", "method.name=tps"), "a folder, not a file"),
    "from_unsupported_uri": Case(("finetune", "$config", "--from", "http://host/dense.safetensors", "--set",
                                  "method.name=tps"), "unsupported URI"),
    "from_runs_uri_without_a_store": Case(("finetune", "$config", "--from", "runs:/0123abcd/checkpoint/model.safetensors",
                                           "--set", "method.name=tps"), "does not exist"),
    # eval
    "eval_checkpoint_missing": Case(("eval", "$config", "--checkpoint", "$missing"), "checkpoint not found"),
    "eval_checkpoint_that_is_not_a_checkpoint": Case(("eval", "$config", "--checkpoint", "$garbage"),
                                                     "not a safetensors checkpoint"),
    "eval_checkpoint_of_other_backbone": Case(("eval", "$config", "--checkpoint", "$small"),
                                              "a checkpoint of backbone vit_small"),
    "eval_method_param_out_of_range": Case(("eval", "$config", "--checkpoint", "$dense", "--set", "method.name=dense",
                                            "--set", "method.params={rho: 0.5}"), "unknown key 'method.params.rho'; allowed: none"),
    "eval_pretrained_missing": Case(("eval", "$config", "--checkpoint", "$dense", "--set", "model.pretrained=$missing"),
                                    "pretrained weights not found"),
    "eval_cuda_without_gpu": Case(("eval", "$config", "--checkpoint", "$dense", "--set", "device=cuda"), "has no GPU",
                                  without_gpu=True),
    "eval_fp16_on_cpu": Case(("eval", "$config", "--checkpoint", "$dense", "--set", "precision=fp16"),
                             "precision=fp16 with device=cpu"),
    # tune
    "tune_unknown_space": Case(("tune", "vppp", "--config", "$config"), "search space not found"),
    "tune_unknown_objective": Case(("tune", "vpp", "--config", "$config", "--objective", "latency"), "--objective latency"),
    "tune_gpus_requested_with_cpu_device": Case(("tune", "vpp", "--config", "$config", "--gpus-per-trial", "1"),
                                                "the GPUs would sit idle"),
    "tune_resume_of_nothing": Case(("tune", "vpp", "--config", "$config", "--resume"), "nothing named 'tune-vpp'"),
    "tune_unknown_backbone": Case(("tune", "vpp", "--config", "$config", "--set", "model.backbone=vit_huge"),
                                  "got 'vit_huge'"),
    "tune_from_checkpoint_of_other_backbone": Case(("tune", "vpp", "--config", "$config", "--from", "$small"),
                                                   "a checkpoint of backbone vit_small"),
    "tune_temporal_space_on_single_frames": Case(("tune", "vpp", "--config", "$config", "--set", "data.num_ref=0"),
                                                 "data.num_ref=0: vpp carries state from frame to frame"),
    # benchmark
    "benchmark_unknown_method": Case(("benchmark", "$config", "--set", "benchmark.methods=[vppp]"), "unknown method 'vppp'"),
    "benchmark_settings_that_miss_a_goal": Case(("benchmark", "$config", "--set", "benchmark.settings=[0.6, 0.7]"),
                                                "do not bracket"),
    "benchmark_gpus_requested_with_cpu_device": Case(("benchmark", "$config", "--gpus-per-trial", "1"),
                                                     "the GPUs would sit idle"),
    "benchmark_pretrained_missing": Case(("benchmark", "$config", "--set", "model.pretrained=$missing"),
                                         "pretrained weights not found"),
    "benchmark_cuda_without_gpu": Case(("benchmark", "$config", "--set", "device=cuda"), "has no GPU", without_gpu=True),
    "benchmark_gpus_requested_without_gpu": Case(("benchmark", "$config", "--set", "device=cuda", "--gpus-per-trial",
                                                   "0.5"), "has no GPU", without_gpu=True),
    "benchmark_resume_of_nothing": Case(("benchmark", "$config", "--resume"), "nothing named 'tiny'"),
    "benchmark_temporal_method_on_single_frames": Case(("benchmark", "$config", "--set", "benchmark.methods=[tps, vpp]",
                                                        "--set", "data.num_ref=0"),
                                                       "data.num_ref=0: vpp carries state from frame to frame"),
    # demo
    "demo_unknown_backbone": Case(("demo", "--out", "$out", "--set", "model.backbone=vit_huge"), "got 'vit_huge'"),
    "demo_gpus_requested_with_cpu_device": Case(("demo", "--out", "$out", "--gpus-per-trial", "1"),
                                                "the GPUs would sit idle"),
    "demo_pretrained_of_other_shapes": Case(("demo", "--out", "$out", "--set", "model.pretrained=$pretrained_small"),
                                            "not a vit_tiny checkpoint"),
    "demo_on_single_frames": Case(("demo", "--out", "$out", "--set", "data.num_ref=0"),
                                  "data.num_ref=0: vpp carries state from frame to frame"),
    # rescore
    "rescore_without_a_store": Case(("rescore", "$config"), "no MLflow store"),
    "rescore_data_root_missing": Case(("rescore", "$config", "--set", "data.root=$missing"), "missing.safetensors"),
    # flops, bench
    "flops_unknown_backbone": Case(("flops", "--backbone", "vit_huge"), "unknown backbone"),
    "flops_unknown_method_param": Case(("flops", "--method", "tps", "--set", "kappa=0.5"), "'kappa'"),
    "flops_no_frames": Case(("flops", "--method", "svit", "--data", "$data", "--max-frames", "0"), "--max-frames 0"),
    "bench_unknown_backbone": Case(("bench", "$config", "--set", "model.backbone=vit_huge"), "got 'vit_huge'"),
    "bench_target_without_presets": Case(("bench", "$config", "--target", "0.9"), "target PKR 0.9"),
    "bench_fp16_on_cpu": Case(("bench", "$config", "--set", "precision=fp16"), "precision=fp16 with device=cpu"),
}


@dataclass(frozen=True)
class Fixtures:
    """Files the cases name, shared by the module (the test's own folder holds ``config`` and ``out``)."""

    data: Path  # tiny synthetic videos in the YouTube-VIS layout
    dense: Path  # a dense prunebench checkpoint of the tiny config (vit_tiny)
    small: Path  # a prunebench checkpoint whose backbone is vit_small
    pretrained_small: Path  # timm vit_small weights: a safetensors file without prunebench metadata
    garbage: Path  # bytes that are no weights file


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Fixtures:
    root = tmp_path_factory.mktemp("bad-inputs")
    data = root / "data"
    generate(data, SynthSpec(**TINY["data"]["synth"]), workers=1)
    config = load_config(write_config(root, data={"root": str(data)}))
    dense = save_checkpoint(root / "dense.safetensors", build_model(config, 5, "dense", {}),
                            {"config": {"model": {"backbone": "vit_tiny"}}, "method": "dense", "params": {}})
    small = save_checkpoint(root / "small.safetensors", torch.nn.Linear(2, 2),
                            {"config": {"model": {"backbone": "vit_small"}}, "method": "dense", "params": {}})
    pretrained_small = root / "vit_small.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("vit_small_patch16_224").state_dict().items()},
              str(pretrained_small))
    garbage = root / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not weights " * 64)
    return Fixtures(data, dense, small, pretrained_small, garbage)


def _env(cache: Path, ray_guard: bool) -> dict[str, str]:
    """The environment of a case: this checkout's code, a cache of its own, the default MLflow store; and, unless
    the case is about this machine's GPU, a Ray address where nothing listens, so that a case that wrongly gets as
    far as Ray fails instead of starting a cluster."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(Path(prunebench.__file__).resolve().parents[1]), PRUNEBENCH_CACHE=str(cache))
    return {**env, "RAY_ADDRESS": "127.0.0.1:9"} if ray_guard else env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """``prunebench ARGS`` in its own process group (killed with everything it started after ``HANG_S``), and the
    CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen([sys.executable, "-m", "prunebench.platform.cli", *args], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr), cpu


def _snapshot(*folders: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for folder in folders if folder.exists() for p in folder.rglob("*")}


@pytest.mark.parametrize("case", [pytest.param(case, id=name, marks=NO_GPU if case.without_gpu else ())
                                  for name, case in CASES.items()])
def test_bad_input_exits_2_with_one_line(case, fixtures, tmp_path):
    config = write_config(tmp_path, data={"root": str(fixtures.data)})
    out, cache = tmp_path / "runs", tmp_path / "cache"
    places = {**{k: str(v) for k, v in vars(fixtures).items()}, "config": str(config), "out": str(out),
              "missing": str(tmp_path / "missing.safetensors")}
    before = _snapshot(tmp_path, fixtures.data)
    done, seconds = _run([Template(a).substitute(places) for a in case.args], tmp_path,
                         _env(cache, ray_guard=not case.without_gpu))
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("prunebench "), done.stderr
    assert case.says in done.stderr, done.stderr
    assert done.stdout == ""
    assert not out.exists() and not cache.exists()
    assert _snapshot(tmp_path, fixtures.data) == before  # nothing written, nowhere
    assert seconds < LIMIT_S, f"took {seconds:.1f} s of CPU"


def test_run_that_fails_after_it_began_ends_failed(fixtures, tmp_path, monkeypatch):
    config = write_config(tmp_path, data={"root": str(fixtures.data)})

    def broken(*args, **kwargs):
        raise RuntimeError("the artifact store went away")

    monkeypatch.setattr(Tracker, "log_evaluation", broken)
    with pytest.raises(RuntimeError, match="went away"):
        main(["eval", str(config), "--checkpoint", str(fixtures.dense), "--no-timing", "--json"])
    client = MlflowClient(resolve_tracking_uri(None, tmp_path / "runs"))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_failed_parent_ends_its_running_children(tmp_path):
    tracker = Tracker(resolve_tracking_uri(None, tmp_path))
    experiment = tracker.experiment("x")
    parent = tracker.run(experiment, "parent", name="parent")
    child = tracker.run(experiment, "child", name="child", parent=parent)
    done = tracker.run(experiment, "done", name="done", parent=parent)
    tracker.end(done)
    with pytest.raises(KeyboardInterrupt), tracker.ending(parent):
        raise KeyboardInterrupt
    status = {r: tracker.client.get_run(r).info.status for r in (parent, child, done)}
    assert status == {parent: "KILLED", child: "KILLED", done: "FINISHED"}
    again = tracker.run(experiment, "again", name="again")
    with pytest.raises(ValueError), tracker.ending(again):
        raise ValueError("broken")
    assert tracker.client.get_run(again).info.status == "FAILED"
