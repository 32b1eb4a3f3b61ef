"""Precision as a setting: training and evaluation under bf16 autocast on the CPU (finite losses, matrix products
really in bf16, weights and scores in fp32), the loss-scaler path of fp16, and the refusals before anything starts."""

import contextlib
import json
import math
from collections.abc import Iterator

import pytest
import torch
from mlflow.tracking import MlflowClient

import prunebench.precision
import prunebench.training.loop
from platform_helpers import write_config
from prunebench.config import load_config
from prunebench.errors import ConfigError
from prunebench.evaluation.vis_eval import evaluate
from prunebench.models.vis_model import VISModel
from prunebench.platform.cli import main
from prunebench.platform.tracking import resolve_tracking_uri
from prunebench.precision import autocast, check_precision, cpu_supports_bf16, grad_scaler
from prunebench.training.checkpoint import save_checkpoint
from prunebench.training.loop import train_steps
from prunebench.training.protocol import build_model, prepare_stage

CPU = torch.device("cpu")
NEEDS_BF16_CPU = pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bfloat16 instructions")


def _prepared(tmp_path, precision="bf16", method="vpp"):
    config = load_config(write_config(tmp_path, precision=precision, method={"name": method}))
    return config, prepare_stage(config, "finetune")


@contextlib.contextmanager
def _matmul_dtypes(model: VISModel) -> Iterator[dict[str, set[torch.dtype]]]:
    """The output dtypes of two matrix products while the block runs: the first block's qkv projection (backbone)
    and the class predictor (head)."""
    seen: dict[str, set[torch.dtype]] = {"backbone": set(), "head": set()}
    layers = {"backbone": model.backbone.vit.blocks[0].attn.qkv, "head": model.head.class_predictor}
    hooks = [layer.register_forward_hook(lambda module, args, out, part=part: seen[part].add(out.dtype))
             for part, layer in layers.items()]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def _weights(model: VISModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_autocast_is_nothing_for_fp32_and_lowers_matmuls_otherwise():
    a = torch.randn(4, 4)
    with autocast("fp32", "cpu"):
        assert (a @ a).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with autocast("bf16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16


def test_grad_scaler_only_for_fp16_on_a_gpu():
    assert not grad_scaler("fp16", "cpu").is_enabled()
    assert not any(grad_scaler(p, "cuda").is_enabled() for p in ("fp32", "bf16"))


@pytest.mark.parametrize(("capabilities", "supported"), [
    ({"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": False}, False),
    ({"architecture": "x86_64", "avx512_bf16": True}, True),
    ({"architecture": "x86_64", "amx_bf16": True}, True),
    ({"architecture": "arm64", "neon": True, "bf16": True}, True),
    ({"architecture": "arm64", "neon": True}, False),
])
def test_cpu_bf16_support_is_read_from_torch_cpu_capabilities(monkeypatch, capabilities, supported):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert cpu_supports_bf16() is supported


def test_fp16_on_the_cpu_is_refused_with_one_line():
    with pytest.raises(ConfigError) as error:
        check_precision("fp16", "cpu")
    assert str(error.value) == ("precision=fp16 with device=cpu: fp16 autocast runs on a GPU only; allowed: "
                                "--set precision=bf16 or precision=fp32, or --set device=cuda")
    check_precision("fp32", "cpu")


def test_the_dense_stage_precision_is_checked_under_its_own_key(tmp_path, capsys):
    config = write_config(tmp_path, precision="fp32", dense_precision="fp16")
    assert main(["train", str(config)]) == 2
    assert capsys.readouterr().err == (
        "prunebench train: error: dense_precision=fp16 with device=cpu: fp16 autocast runs on a GPU only; allowed: "
        "--set dense_precision=bf16 or dense_precision=fp32, or --set device=cuda\n")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()

def test_bf16_on_a_cpu_without_bfloat16_stops_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prunebench.precision, "cpu_supports_bf16", lambda: True)
    check_precision("bf16", "cpu")
    monkeypatch.setattr(prunebench.precision, "cpu_supports_bf16", lambda: False)
    config = write_config(tmp_path, precision="bf16")
    assert main(["train", str(config)]) == 2
    assert capsys.readouterr().err == (
        "prunebench train: error: precision=bf16 but this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16, "
        "avx_ne_convert or ARM bf16 in torch.cpu.get_capabilities()); allowed: --set precision=fp32, or "
        "--set device=cuda\n")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_bf16_on_a_gpu_without_native_bfloat16_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ConfigError, match=r"^precision=bf16 but this machine's GPU \(Tesla T4\) has no native bfloat16"):
        check_precision("bf16", "cuda")
    check_precision("fp16", "cuda")


@NEEDS_BF16_CPU
def test_training_steps_under_bf16_give_finite_losses_and_keep_fp32_weights(tmp_path):
    config, prepared = _prepared(tmp_path)
    before, steps = _weights(prepared.model), []
    with _matmul_dtypes(prepared.model) as dtypes:
        train_steps(prepared.model, prepared.sampler, prepared.optim, config.seed, CPU,
                    on_step=lambda metrics, _: steps.append(metrics), precision=config.precision)
    assert len(steps) == 2 and all(math.isfinite(m.loss) and math.isfinite(m.task_loss) for m in steps)
    assert not any(m.skipped for m in steps)
    # the backbone ran its matrix products in bf16, the head (and with it the loss) in fp32
    assert dtypes == {"backbone": {torch.bfloat16}, "head": {torch.float32}}
    after = _weights(prepared.model)
    assert all(p.dtype == torch.float32 for p in after.values())
    assert any(not torch.equal(before[name], after[name]) for name in before)


@NEEDS_BF16_CPU
def test_evaluation_under_bf16_runs_the_model_in_bf16_and_scores_in_fp32(tmp_path):
    config, prepared = _prepared(tmp_path)
    with _matmul_dtypes(prepared.model) as dtypes:
        evaluation = evaluate(prepared.model, prepared.valid, config.eval, config.data.max_size, config.device,
                              timing=True, precision=config.precision)
    metrics = evaluation.metrics
    # in both passes: a timing pass in fp32 would add float32 to the backbone's
    assert dtypes == {"backbone": {torch.bfloat16}, "head": {torch.float32}}
    assert metrics["precision"] == "bf16" and metrics["AP"] is not None
    assert all(math.isfinite(metrics[k]) for k in ("pkr", "gmacs", "fps_backbone", "fps_model"))
    assert 0 < metrics["pkr"] < 1 and metrics["ioi"]["all"] is not None
    assert evaluation.examples[0].block_keep.dtype == "float32"  # keep masks read in fp32


@NEEDS_BF16_CPU
def test_an_evaluation_run_records_its_precision_in_params_and_metrics(tmp_path, capsys):
    path = write_config(tmp_path, precision="bf16")
    config = load_config(path)
    checkpoint = save_checkpoint(tmp_path / "dense.safetensors", build_model(config, 5, "dense", {}),
                                 {"config": {"model": {"backbone": "vit_tiny"}}, "method": "dense", "params": {}})
    assert main(["eval", str(path), "--checkpoint", str(checkpoint), "--no-timing", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    run = MlflowClient(resolve_tracking_uri(None, config.out)).get_run(result["mlflow_run_id"])
    assert run.data.params["precision"] == "bf16" and result["precision"] == "bf16"


@pytest.mark.parametrize("init_scale", [1e38, 1.0])
def test_fp16_loss_scaler_path_skips_overflowing_steps_and_applies_the_others(tmp_path, monkeypatch, init_scale):
    """The path of fp16 on a GPU, run on the CPU with torch's CPU GradScaler: an overflowing scaled gradient skips the
    update and lowers the scale without counting as a failed step; a finite one is unscaled, clipped and applied."""
    config, prepared = _prepared(tmp_path, precision="fp32")
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    monkeypatch.setattr(prunebench.training.loop, "grad_scaler", lambda precision, device: scaler)
    before, steps = _weights(prepared.model), []
    train_steps(prepared.model, prepared.sampler, prepared.optim, config.seed, CPU,
                on_step=lambda metrics, _: steps.append(metrics))
    assert len(steps) == 2 and all(math.isfinite(m.loss) for m in steps)  # the loss is reported unscaled
    after = _weights(prepared.model)
    if init_scale > 1:
        assert all(m.skipped for m in steps) and scaler.get_scale() < init_scale
        assert all(torch.equal(before[name], after[name]) for name in before)
    else:
        assert not any(m.skipped for m in steps)
        assert any(not torch.equal(before[name], after[name]) for name in before)


@NEEDS_BF16_CPU
@pytest.mark.parametrize("method", ["dynamicvit", "tps", "svit", "vpp"])
def test_training_keep_decisions_stay_zero_or_one_under_bf16(method):
    """The straight-through keep decisions are made in fp32 under bf16 autocast: in bf16 a kept token's value
    1 + s − s rounds to 0.996, which would scale its block update and bias the ratio loss."""
    from prunebench.models import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", method).train()
    frames = torch.randn(2, 2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    state = None
    with autocast("bf16", "cpu"):
        for t in range(2):  # VPP's Map-SM decides from the second frame on
            out = backbone(frames[:, t], state=state)
            state = out.state
    keeps = [record.keep for record in out.records]
    assert len(keeps) >= 3
    for keep in keeps:
        keep = keep.detach()  # fp32's own rounding of 1 + s − s is below 1e-7
        assert keep.dtype == torch.float32 and float((keep - keep.round()).abs().max()) < 1e-6, keep.unique()
