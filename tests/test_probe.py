"""The convergence probe: readings that depend on the parameters only, and a probe that never changes training."""

import pytest
import torch

from platform_helpers import write_config
from prunebench.config import load_config
from prunebench.training.loop import train_steps
from prunebench.training.probe import Probe
from prunebench.training.protocol import prepare_stage

CPU = torch.device("cpu")


def _prepared(tmp_path, method="dynamicvit", params=None, adapter="none"):
    path = write_config(tmp_path, method={"name": method, "params": {"rho": 0.7} if params is None else params},
                        model={"adapter": adapter}, finetune={"steps": 3})
    return prepare_stage(load_config(path), "finetune")


@pytest.mark.parametrize("adapter", ["none", "vit_adapter"])
def test_reading_depends_on_the_parameters_only_and_leaves_model_and_rng_alone(tmp_path, adapter):
    prepared = _prepared(tmp_path, adapter=adapter)
    model = prepared.model.train()
    probe = Probe(prepared.sampler, clips=3, batch_size=2)
    assert [len(b.frames) for b in probe.batches] == [2, 1]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    first = probe.measure(model, CPU)
    after_probe = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(after_probe, torch.rand(4))  # the caller's random stream is where it was
    assert probe.measure(model, CPU) == first  # the same clips and draws: the same reading
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    assert set(first.stage_keep) == {"b3", "b6", "b9"} and all(0 <= k <= 1 for k in first.stage_keep.values())
    with torch.no_grad():
        for p in model.backbone.method.parameters():
            p.add_(0.5 * torch.randn_like(p))
    assert probe.measure(model, CPU) != first


def test_a_run_with_a_probe_trains_exactly_as_one_without(tmp_path):
    def final_weights(with_probe):
        prepared = _prepared(tmp_path)
        probe = Probe(prepared.sampler, clips=2, batch_size=2)
        readings = []
        on_step = (lambda metrics, _: readings.append(probe.measure(prepared.model, CPU))) if with_probe else None
        train_steps(prepared.model, prepared.sampler, prepared.optim, seed=0, device=CPU, on_step=on_step)
        return prepared.model.state_dict(), readings

    probed, readings = final_weights(True)
    plain, _ = final_weights(False)
    assert len(readings) == 3 and readings[0] != readings[-1]
    assert all(torch.equal(probed[k], plain[k]) for k in plain)


def test_probe_clips_are_the_same_in_every_trial(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    one = Probe(_prepared(tmp_path / "a").sampler, clips=2, batch_size=2)
    prepared = _prepared(tmp_path / "b", method="vpp", params={})
    prepared.sampler.seed, prepared.sampler.epoch = 7, 3  # another trial seed, later in training
    other = Probe(prepared.sampler, clips=2, batch_size=2)
    assert torch.equal(one.batches[0].frames, other.batches[0].frames)
