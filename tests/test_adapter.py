"""ViT-Adapter around the PrunableViT: pruning through it, path agreement, gradients, shapes, cost, size."""

import json

import pytest
import torch

from model_helpers import as_trained
from prunebench.config import load_config
from prunebench.errors import ConfigError
from prunebench.evaluation.cost import measure_flops
from prunebench.evaluation.flops import count_macs
from prunebench.models import create_backbone
from prunebench.models.merging import TokenSequence
from prunebench.models.pruning import PruningMethod, Selection
from prunebench.models.vis_model import HeadConfig, VISModel
from prunebench.models.vit import PrunableViT
from prunebench.platform.cli import main

GRID = (6, 8)  # 96x128 images
N = GRID[0] * GRID[1]


class FixedMasks(PruningMethod):
    """Test fixture: preset ``(B, N)`` keep masks at preset positions; records the full map at every boundary."""

    name = "fixed"
    Params = type(None)

    def __init__(self, masks, dim=192, depth=12):
        super().__init__(None, dim, depth)
        self.masks = masks
        self.seen = {}

    @property
    def positions(self):
        return tuple(sorted(self.masks))

    @property
    def observation_points(self):
        return tuple(range(self.depth + 1))

    def select(self, position, candidates, ctx):
        return Selection(self.masks[position].to(candidates.tokens.dtype).gather(1, candidates.index))

    def observe(self, boundary, tokens, active, ctx):
        self.seen[boundary] = tokens.clone()


def _fixed(masks, adapter):
    torch.manual_seed(0)
    model = PrunableViT("vit_tiny", FixedMasks(masks), adapter=adapter).eval()
    return as_trained(model) if model.adapter is not None else model


def _random_masks(batch, ratios=((1, 0.6), (5, 0.45), (9, 0.2))):
    g = torch.Generator().manual_seed(1)
    return {p: (torch.rand(batch, N, generator=g) < r).float() for p, r in ratios}


@pytest.mark.parametrize("path", ["masked", "gather"])
def test_injector_reaches_tokens_pruned_at_block_1(path):
    keep = torch.ones(1, N)
    keep[0, :12] = 0  # tokens 0..11 pruned from block 1 on
    images = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    for adapter in ("none", "vit_adapter"):
        model = _fixed({1: keep}, adapter)
        with torch.no_grad():
            model(images, path=path)
        seen = {b: x[0, :12] for b, x in model.method.seen.items()}
        # inside a stage the blocks leave a pruned token as it is, with or without the adapter
        for a, b in ((1, 2), (3, 4), (4, 5), (6, 7), (9, 10), (11, 12)):
            torch.testing.assert_close(seen[b], seen[a], rtol=0, atol=0)
        for stage_start in (3, 6, 9):  # the boundary is seen after the injector of the stage
            changed = (seen[stage_start] - seen[stage_start - 1]).abs().amax(dim=-1)
            if adapter == "none":
                assert torch.equal(changed, torch.zeros(12)), (adapter, stage_start)
            else:
                assert bool((changed > 1e-4).all()), (adapter, stage_start, changed)


@pytest.mark.parametrize("batch", [1, 3])
def test_masked_and_gather_paths_agree_with_adapter(batch):
    model = _fixed(_random_masks(batch), "vit_adapter")
    images = torch.randn(batch, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        masked = model(images, path="masked")
        gathered = model(images, path="gather")
    assert torch.equal(masked.block_keep, gathered.block_keep)
    torch.testing.assert_close(gathered.features, masked.features, rtol=1e-5, atol=1e-5)
    for a, b in zip(gathered.pyramid, masked.pyramid):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "method, params",
    [
        ("vpp", {"stochastic_inference": False}),
        ("svit", {"stochastic_inference": False}),
        ("dynamicvit", {"rho": 0.7}),
        ("tps", {"rho": 0.7}),
        ("random", {"rho": 0.7}),
        ("evit", {"kappa": 0.7}),
        ("tome", {"r": 4}),
    ],
)
def test_every_method_prunes_through_the_adapter(method, params):
    torch.manual_seed(0)
    model = as_trained(create_backbone("vit_tiny", method, params, adapter="vit_adapter").eval())
    frames = torch.randn(2, 1, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        first = model(frames[0], generator=torch.Generator().manual_seed(0))
        outs = {p: model(frames[1], state=first.state, path=p, generator=torch.Generator().manual_seed(0))
                for p in ("masked", "gather")}
    assert torch.equal(outs["masked"].block_keep, outs["gather"].block_keep)
    assert outs["gather"].block_keep[-1].sum() < N  # it did prune
    torch.testing.assert_close(outs["gather"].features, outs["masked"].features, rtol=1e-5, atol=1e-5)
    for a, b in zip(outs["gather"].pyramid, outs["masked"].pyramid):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "method, params", [("vpp", None), ("svit", None), ("dynamicvit", None), ("tps", None), ("evit", None), ("tome", {"r": 2})]
)
def test_gradients_reach_the_adapter_and_every_selector(method, params):
    torch.manual_seed(0)
    model = as_trained(create_backbone("vit_tiny", method, params, adapter="vit_adapter").train())
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(2, 2, 3, 64, 64, generator=g)  # 2 frames of 2 streams
    state, total = None, 0.0
    for t in range(2):
        out = model(frames[t], state=state)
        state = out.state
        # a random linear read-out: the levels leave a training-mode BatchNorm, whose output's square
        # sum is constant in its input
        total = total + sum((level * torch.randn(level.shape, generator=g)).sum() for level in out.pyramid) + out.loss
    total.backward()
    for part in (model.adapter, model.method):
        missing = [n for n, p in part.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing


@pytest.mark.parametrize("method, params", [("evit", {"kappa": 1.0}), ("tome", {"r": 0})])
def test_merging_method_that_keeps_every_token_is_the_dense_adapter_backbone(method, params):
    dense = as_trained(create_backbone("vit_tiny", "dense", adapter="vit_adapter").eval())
    merging = create_backbone("vit_tiny", method, params, adapter="vit_adapter").eval()
    merging.load_state_dict(dense.state_dict())
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected, out = dense(images), merging(images)
    torch.testing.assert_close(out.features, expected.features, rtol=1e-5, atol=1e-5)
    for a, b in zip(out.pyramid, expected.pyramid):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method, params", [("evit", {"kappa": 0.7}), ("tome", {"r": 6})])
def test_merging_through_the_adapter_is_batch_independent(method, params):
    """Each sample of a batch merges and takes the injectors' updates as it does alone."""
    torch.manual_seed(0)
    model = as_trained(create_backbone("vit_tiny", method, params, adapter="vit_adapter").eval())
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        both, single = model(images), model(images[1:])
    assert both.block_keep[-1].sum(-1).lt(N).all()  # it merged
    assert torch.equal(both.block_keep[:, 1:], single.block_keep)
    torch.testing.assert_close(both.features[1:], single.features, rtol=1e-5, atol=1e-5)
    for a, b in zip(both.pyramid, single.pyramid):
        torch.testing.assert_close(a[1:], b, rtol=1e-5, atol=1e-5)


def test_injector_reaches_patches_that_left_a_merging_sequence():
    """EViT drops tokens inside block 3; their patches still take the injectors of stages 2 and 3 (blocks 6, 9)."""
    torch.manual_seed(0)
    model = as_trained(create_backbone("vit_tiny", "evit", {"kappa": 0.7}, adapter="vit_adapter").eval())
    images = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(7))
    out = model(images)
    dropped = int((out.block_keep[4, 0] == 0).nonzero()[0, 0])
    wrt = [model.adapter.stages[s].injector.gamma for s in (1, 2, 3)]
    readout = torch.randn(192, generator=torch.Generator().manual_seed(8))  # a plain sum of a LayerNorm's output is constant
    grads = torch.autograd.grad((out.features.flatten(2)[0, :, dropped] * readout).sum(), wrt)
    assert all(g.abs().sum() > 0 for g in grads)  # before it left (stage 1) and after (stages 2, 3)


def test_a_merged_token_takes_the_mean_of_its_patches_injected_features():
    # 4 patches: 0 and 1 merged into token 0, patch 2 alone in token 1, patch 3 off the sequence; token 2 has no patch
    tokens = torch.arange(3 * 2, dtype=torch.float32).reshape(1, 3, 2)
    sequence = TokenSequence(
        tokens, size=torch.tensor([[2.0, 1.0, 0.0]]), cell=torch.tensor([[0, 2, -1]]),
        source=torch.tensor([[0, 0, 1, -1]]), frozen=torch.full((1, 4, 2), -1.0),
    )
    full = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [50.0, 60.0], [70.0, 80.0]]])
    rewritten = sequence.rewritten(full)
    torch.testing.assert_close(rewritten.tokens, torch.tensor([[[20.0, 30.0], [50.0, 60.0], [4.0, 5.0]]]))
    torch.testing.assert_close(rewritten.frozen[0, 3], full[0, 3])
    torch.testing.assert_close(rewritten.unmerged(), torch.tensor([[[20.0, 30.0], [20.0, 30.0], [50.0, 60.0], [70.0, 80.0]]]))


@pytest.mark.parametrize("size, grid", [((128, 224), (8, 14)), ((80, 96), (5, 6))])
def test_output_pyramid_shapes(size, grid):
    model = create_backbone("vit_tiny", "dense", adapter="vit_adapter").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    h, w = grid
    expected = [(2, 192, 4 * h, 4 * w), (2, 192, 2 * h, 2 * w), (2, 192, h, w), (2, 192, -(-h // 2), -(-w // 2))]
    assert [tuple(level.shape) for level in out.pyramid] == expected
    assert out.features.shape == (2, 192, h, w)
    assert create_backbone("vit_tiny", "dense").eval()(torch.randn(1, 3, *size)).pyramid is None


def test_vis_model_takes_the_adapter_pyramid():
    torch.manual_seed(0)
    model = VISModel(create_backbone("vit_tiny", "dense", adapter="vit_adapter"), 5, HeadConfig(num_queries=6)).eval()
    assert model.pyramid is None
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.mask_logits.shape == (1, 6, 16, 24)


def test_config_key_and_its_values():
    assert load_config({}).model.adapter == "none"
    assert load_config({"model": {"adapter": "vit_adapter"}}).model.adapter == "vit_adapter"
    with pytest.raises(ConfigError, match="model.adapter must be one of 'none', 'vit_adapter', got 'vit_detr'"):
        load_config({"model": {"adapter": "vit_detr"}})


def test_deformable_attention_is_counted():
    """The injector of stage 0 at 64x64 (N = 16 queries over 64 + 16 + 4 prior tokens), in MACs."""
    model = create_backbone("vit_tiny", "dense", adapter="vit_adapter").eval()
    with torch.inference_mode():
        macs, _ = count_macs(lambda: model(torch.randn(1, 3, 64, 64)))
    n, d, nc, heads, levels, points = 16, 192, 84, 6, 3, 4
    expected = (
        5 * n * d + 5 * nc * d  # the two LayerNorms
        + nc * d * d + n * d * d  # value and output projections
        + n * d * heads * levels * points * 3  # sampling offsets (x, y) and attention weights
        + 5 * d * n * levels * points  # bilinear sampling (4) and weighting (1) of every sampled value
    )
    assert macs.within("PrunableViT.adapter.stages.0.injector") == expected


@pytest.mark.parametrize("method, params", [("dynamicvit", {"rho": 0.7}), ("evit", {"kappa": 0.7}), ("tome", {"r": 2})])
def test_adapter_cost_is_reported_apart_and_included(method, params):
    plain = measure_flops("vit_tiny", method, params, (64, 96))
    adapted = measure_flops("vit_tiny", method, params, (64, 96), adapter="vit_adapter")
    assert "gmacs_adapter" not in plain and "adapter_params" not in plain
    assert adapted["adapter_params"] == 2_438_192
    # the whole backbone = the plain ViT with its pruner (same kept counts) + the adapter
    assert adapted["gmacs"] == pytest.approx(plain["gmacs"] + adapted["gmacs_adapter"], rel=1e-9)
    assert adapted["gmacs_pruner"] == pytest.approx(plain["gmacs_pruner"], rel=1e-9)
    assert adapted["gmacs_dense"] > adapted["gmacs"] > adapted["gmacs_adapter"] > 0
    assert adapted["per_block_tokens"] == plain["per_block_tokens"]


def test_flops_cli_json_keys(capsys):
    argv = ["flops", "--backbone", "vit_tiny", "--img-size", "64", "64", "--json"]
    assert main([*argv, "--adapter", "vit_adapter"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["adapter"] == "vit_adapter"
    assert result["adapter_params"] == 2_438_192 and 0 < result["gmacs_adapter"] < result["gmacs"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--adapter", "detr"])
    assert stop.value.code == 2 and "--adapter" in capsys.readouterr().err


@pytest.mark.parametrize("backbone, ours, published", [("vit_tiny", 2_438_192, 2.0e6), ("vit_small", 5_830_160, 4.0e6)])
def test_parameters_match_published_vit_adapter_sizes(backbone, ours, published):
    """ViT-Adapter paper, Table 1 (Mask R-CNN): ViT-Adapter-T 28.1M vs ViT-T 26.1M, -S 47.8M vs 43.8M.

    Their ViT baseline has a pyramid of its own (three 2x2 transposed convolutions D→D, a GroupNorm and
    four LayerNorms, 12D² + 13D parameters) that the adapter replaces, so adapter − that = 2.0M / 4.0M,
    within the ±0.1M the rounded table allows.
    """
    adapter = create_backbone(backbone, "dense", adapter="vit_adapter").adapter
    dim = adapter.up.in_channels
    assert adapter.num_parameters() == ours
    assert adapter.num_parameters() - (12 * dim * dim + 13 * dim) == pytest.approx(published, abs=0.1e6)
