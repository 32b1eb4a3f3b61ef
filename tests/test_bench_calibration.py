"""The latency benchmarks' calibration of random-weight selectors to their keep targets, and the frames they count."""

import statistics

import pytest
import torch

from prunebench.evaluation.bench import compare, cost_over_frames, preset_model, stage_keep
from prunebench.evaluation.flops import backbone_cost


def _video(count: int, seed: int) -> list[torch.Tensor]:
    """A random 64x112 frame (28 tokens) and slightly perturbed copies, two streams."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, 64, 112, generator=g)
    return [base + 0.05 * torch.randn(2, 3, 64, 112, generator=g) for _ in range(count)]


@pytest.mark.parametrize("method, target", [("vpp", 0.40), ("vpp", 0.55), ("svit", 0.40)])
def test_every_dynamic_stage_keeps_its_target_share(method, target):
    frames = _video(4, seed=1)
    model = preset_model("vit_tiny", method, target, frames, steps=20)
    targets = model.method.stage_targets()
    scorers = model.method.dynamic_scorers()
    assert scorers and set(scorers) <= set(targets)
    for position in scorers:  # 3 measured frames × 2 streams × 28 tokens: steps of 1/168
        assert stage_keep(model, frames, position) == pytest.approx(targets[position], abs=0.02)


def test_vpp_reaches_its_preset_pkr_on_another_video():
    """Without calibration a random VPP keeps what chance gives; calibrated on one video, it keeps about the
    PKR its targets imply (0.413 at the 0.40 preset; the timed chain's dense first frame adds a little)."""
    held_out = [(i == 0, f[:1]) for i, f in enumerate(_video(8, seed=2))]
    calibrated = preset_model("vit_tiny", "vpp", 0.40, _video(4, seed=1), steps=20)
    _, pkr = cost_over_frames(calibrated, held_out)
    assert 0.38 < pkr < 0.50


@pytest.mark.parametrize("method", ["dynamicvit", "tps"])
def test_top_k_methods_are_left_as_they_are(method):
    frames = _video(3, seed=1)
    untouched = preset_model("vit_tiny", method, 0.40, frames, steps=0)
    calibrated = preset_model("vit_tiny", method, 0.40, frames, steps=20)
    assert calibrated.method.dynamic_scorers() == {}
    for (name, a), (_, b) in zip(untouched.state_dict().items(), calibrated.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_counted_frames_are_the_timed_frames():
    """MACs and PKR are counted on the frames after warm-up with the state the warm-up left, as they are timed;
    counting them as a chain of their own would restart VPP's state (a first frame keeps every token at the Map-SM)."""
    frames = [(i == 0, f[:1]) for i, f in enumerate(_video(6, seed=2))]
    vpp = preset_model("vit_tiny", "vpp", 0.40, _video(4, seed=1), steps=20)
    rows = compare({"dense": preset_model("vit_tiny", "dense", 0.40, [], steps=0), "vpp": vpp}, frames, warmup=2)
    _, carried = cost_over_frames(vpp, frames, warmup=2)
    _, restarted = cost_over_frames(vpp, frames[2:])
    assert rows["vpp"]["pkr"] == carried < restarted


def test_a_window_across_videos_pairs_the_median_cost_with_the_median_latency():
    """A timed window that starts a new video holds a stream-first frame (VPP keeps every token at its Map-SM):
    its cost lifts a mean, not the median the latency is."""
    frames = [(i in (0, 3), f[:1]) for i, f in enumerate(_video(6, seed=2))]
    vpp = preset_model("vit_tiny", "vpp", 0.40, _video(4, seed=1), steps=20)
    generator, state, costs = torch.Generator().manual_seed(0), None, []
    for first, frame in frames:
        cost = backbone_cost(vpp, frame, state=None if first else state, generator=generator)
        state = cost.output.state
        costs.append(cost.gmacs)
    gmacs, _ = cost_over_frames(vpp, frames, warmup=1)
    assert gmacs == pytest.approx(statistics.median(costs[1:])) and gmacs < statistics.fmean(costs[1:])
