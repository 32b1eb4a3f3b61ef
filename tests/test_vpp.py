"""VPP's temporal behaviour: state carried over a clip, reset per video, exact Map-SM top-k."""

import math

import pytest
import torch

from prunebench.models import create_backbone
from prunebench.models.pruning import Candidates, FrameContext, gumbel_noise, hard_gumbel_keep
from prunebench.models.vpp import VPP, VPPParams, spatial_prior

N = 196
KAPPA = 0.7


def _tokens_per_block(out, sample=0):
    return out.block_keep[:, sample].sum(-1).int().tolist()


@pytest.fixture(scope="module")
def clip():
    return torch.randn(3, 1, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def test_state_is_carried_over_a_clip_and_reset_on_a_new_video(clip):
    model = create_backbone("vit_tiny", "vpp", {"kappa": KAPPA}).eval()
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        state, per_frame = None, []
        for frame in clip:
            out = model(frame, state=state, generator=g)
            per_frame.append(_tokens_per_block(out))
            state = out.state
            assert set(state) == {"x_ref", "x_to_map", "selector", "grid"}
        restarted = model(clip[0], state=None, generator=g)
    first, second, third = per_frame
    # first frame: no state, blocks 0..2 dense; SMs still prune from block 3 on
    assert first[:3] == [N, N, N] and first[3] <= N
    # later frames: the Map-SM keeps exactly ⌊κN⌋ in blocks 1 and 2
    for frame in (second, third):
        assert frame[0] == N
        assert frame[1] == frame[2] == math.floor(KAPPA * N)
    # a new video resets the state: dense in blocks 1-2 again
    assert _tokens_per_block(restarted)[:3] == [N, N, N]


def test_training_chain_keeps_exact_count_and_passes_gradients_across_frames(clip):
    model = create_backbone("vit_tiny", "vpp").train()
    frames = clip.repeat(1, 2, 1, 1, 1)  # batch of 2 streams
    state, outs = None, []
    for frame in frames:
        out = model(frame, state=state)
        outs.append(out)
        state = out.state
    for out in outs[1:]:
        assert out.block_keep[1].sum(-1).tolist() == [math.floor(KAPPA * N)] * 2
    assert outs[0].state["x_to_map"].requires_grad  # state is not detached along the chain
    outs[-1].loss.backward()
    assert model.method.sm_scorers[0].fc2.weight.grad is not None


@pytest.mark.parametrize("reading, block, hook", [("paper", 1, "pre"), ("code", 2, "post")])
def test_x_ref_readings(clip, reading, block, hook):
    model = create_backbone("vit_tiny", "vpp", {"x_ref": reading}).eval()
    seen = {}
    if hook == "pre":
        model.vit.blocks[block].register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    else:
        model.vit.blocks[block].register_forward_hook(lambda m, a, o: seen.__setitem__("x", o))
    with torch.inference_mode():
        out = model(clip[0])  # first frame: blocks 1-2 are dense, so the hooks see every token
    torch.testing.assert_close(out.state["x_ref"], seen["x"])


def test_x_to_map_is_block5_output(clip):
    model = create_backbone("vit_tiny", "vpp", {"stochastic_inference": False}).eval()
    with torch.inference_mode():
        out = model(clip[0], path="masked")
    selector = out.state["selector"]
    assert torch.equal(selector, out.block_keep[5] > 0.5)


def test_inference_noise_is_seeded_and_deterministic_option_has_none(clip):
    stochastic = create_backbone("vit_tiny", "vpp").eval()

    def run(model, seed):
        g = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            first = model(clip[0], generator=g)
            return model(clip[1], state=first.state, generator=g).block_keep

    assert torch.equal(run(stochastic, 7), run(stochastic, 7))
    assert not torch.equal(run(stochastic, 7), run(stochastic, 8))
    deterministic = create_backbone("vit_tiny", "vpp", {"stochastic_inference": False}).eval()
    deterministic.load_state_dict(stochastic.state_dict())
    assert torch.equal(run(deterministic, 1), run(deterministic, 2))


def test_spatial_prior_values():
    prior = spatial_prior((2, 2), (2, 2), torch.device("cpu"))
    assert prior[0, 0] == pytest.approx(1.0, abs=1e-6)  # same position
    assert prior[0, 3] == pytest.approx(-6.0, abs=1e-3)  # opposite corners, δ = 2
    assert prior[0, 1] == pytest.approx(math.log10(5 + 1e-6), abs=1e-6)  # δ = 1


def test_spatial_prior_is_built_once_per_grid_pair_and_serves_training_after_inference():
    cpu = torch.device("cpu")
    spatial_prior.cache_clear()
    with torch.inference_mode():
        prior = spatial_prior((3, 5), (2, 4), cpu)
    assert prior.shape == (15, 8) and not prior.is_inference()
    assert spatial_prior((3, 5), (2, 4), cpu) is prior
    for q, k in ((0, 0), (7, 3), (14, 4)):  # the formula, token by token (grid order, coordinates in [0, 1])
        delta = abs((q % 5) / 4 - (k % 4) / 3) + abs((q // 5) / 2 - (k // 4) / 1)
        assert prior[q, k].item() == pytest.approx(math.log10(10 * (2 - delta) / 2 + 1e-6), abs=1e-5)
    scores = torch.randn(2, 15, 8, requires_grad=True)
    (scores + prior).logsumexp(-1).sum().backward()  # a prior cached in inference mode joins an autograd graph
    assert scores.grad is not None


def test_gumbel_noise_in_place_matches_the_formula():
    like = torch.empty(64, 33)
    noise = gumbel_noise(like, torch.Generator().manual_seed(5))
    u = torch.rand(like.shape, generator=torch.Generator().manual_seed(5))
    expected = -torch.log(-torch.log(u.clamp(min=torch.finfo(u.dtype).tiny, max=1.0 - 1e-7)))
    assert torch.equal(noise, expected)


def test_scaled_gumbel_keep_probability():
    # VPP's call keeps with P = σ(τΔ); the standard call with P = σ(Δ) for any τ
    delta = 0.1
    log_probs = torch.log_softmax(torch.tensor([delta, 0.0]), -1).expand(200_000, 2)
    g = torch.Generator().manual_seed(0)
    vpp = hard_gumbel_keep(log_probs, noise_scale=0.1, temperature=1.0, noise=True, generator=g, gradient=False)
    std = hard_gumbel_keep(log_probs, noise_scale=1.0, temperature=10.0, noise=True, generator=g, gradient=False)
    assert vpp.mean().item() == pytest.approx(torch.sigmoid(torch.tensor(10 * delta)).item(), abs=0.005)
    assert std.mean().item() == pytest.approx(torch.sigmoid(torch.tensor(delta)).item(), abs=0.005)


def test_loss_matches_methods_formula(clip):
    model = create_backbone("vit_tiny", "vpp").train()
    first = model(clip[0])
    second = model(clip[1], state=first.state)
    p = model.method.params
    sm = [r.keep.mean() for r in second.records[1:]]
    targets = [0.7 * 0.8, 0.7 * 0.8**2, 0.7 * 0.8**3]
    s = second.records[0].aux["map_score"].mean()
    expected = 40 * (sum((k - t) ** 2 for k, t in zip(sm, targets)) + 10 * (s - 0.5) ** 2) / 13
    torch.testing.assert_close(second.loss, expected)
    sm_first = [r.keep.mean() for r in first.records[1:]]  # Map-SM inactive on the first frame
    torch.testing.assert_close(first.loss, 40 * sum((k - t) ** 2 for k, t in zip(sm_first, targets)) / 3)
    assert p.sm_targets == pytest.approx(tuple(targets))


def test_map_sm_matches_in_fp32_under_a_bf16_autocast():
    """Near-identical tokens (dot products ~700, 0.1 apart): bf16 products would round by ~1 and change most
    matches; the Map-SM matches on fp32 products whatever the autocast (noise off to compare exactly)."""
    torch.manual_seed(0)
    vpp = VPP(VPPParams(stochastic_inference=False), 192, 12).eval()
    grid, n = (8, 14), 112
    base = 2.0 * torch.randn(1, 1, 192)
    tokens, keys = (base + 0.03 * torch.randn(1, n, 192) for _ in range(2))
    values = torch.randn(1, n, 192)
    state = {"x_ref": keys, "x_to_map": values, "selector": torch.ones(1, n, dtype=torch.bool), "grid": grid}
    mapped = []
    vpp.map_scorer.register_forward_pre_hook(lambda _module, args: mapped.append(args[0]))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        vpp.select(1, Candidates(tokens, torch.ones(1, n), torch.arange(n)[None], grid),
                   FrameContext(grid, False, state_in=state))
    match = (tokens @ keys.transpose(1, 2) + spatial_prior(grid, grid, tokens.device)).argmax(-1)
    assert torch.equal(mapped[0], values[0, match[0]][None])
