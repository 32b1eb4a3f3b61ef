"""The two execution paths of PrunableViT compute the same function; inference really shrinks."""

import pytest
import torch

from prunebench.models import create_backbone
from prunebench.models.pruning import PruningMethod, Selection
from prunebench.models.vit import PrunableViT


class FixedMasks(PruningMethod):
    """Test fixture: keeps the tokens of preset ``(B, N)`` masks at preset positions."""

    name = "fixed"
    Params = type(None)

    def __init__(self, masks, dim, depth, reactivates=False):
        super().__init__(None, dim, depth)
        self.masks = masks
        self.reactivates = reactivates

    @property
    def positions(self):
        return tuple(sorted(self.masks))

    def select(self, position, candidates, ctx):
        mask = self.masks[position].to(candidates.tokens.dtype)
        return Selection(mask.gather(1, candidates.index))


def _masks(batch, n=196, ratios=((2, 0.7), (5, 0.45), (9, 0.2))):
    g = torch.Generator().manual_seed(1)
    return {p: (torch.rand(batch, n, generator=g) < r).float() for p, r in ratios}


def _model(masks, reactivates=False):
    torch.manual_seed(0)
    return PrunableViT("vit_tiny", FixedMasks(masks, 192, 12, reactivates)).eval()


@pytest.mark.parametrize("reactivates", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_masked_and_gather_paths_agree(batch, reactivates):
    model = _model(_masks(batch), reactivates)
    images = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        masked = model(images, path="masked")
        gathered = model(images, path="gather")
    assert torch.equal(masked.block_keep, gathered.block_keep)
    torch.testing.assert_close(gathered.features, masked.features, rtol=1e-5, atol=1e-5)


def test_padded_batch_equals_per_sample_runs():
    masks = _masks(3)
    model = _model(masks)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        batched = model(images).features
        for i in range(3):
            model.method.masks = {p: m[i:i + 1] for p, m in masks.items()}
            single = model(images[i:i + 1]).features
            torch.testing.assert_close(batched[i:i + 1], single, rtol=1e-5, atol=1e-5)


def test_pruned_tokens_stay_frozen():
    masks = {4: torch.zeros(1, 196)}
    masks[4][0, :10] = 1
    model = _model(masks)
    seen = {}
    model.vit.blocks[4].register_forward_pre_hook(lambda m, a: seen.__setitem__("kept_in", a[0].shape[1]))
    model.vit.blocks[3].register_forward_hook(lambda m, a, out: seen.__setitem__("map", out.clone()))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert seen["kept_in"] == 10
    final = out.features.flatten(2).transpose(1, 2)
    torch.testing.assert_close(final[:, 10:], model.vit.norm(seen["map"])[:, 10:])
    assert not torch.allclose(final[:, :10], model.vit.norm(seen["map"])[:, :10])


@pytest.mark.parametrize(
    "method, params",
    [
        ("dynamicvit", {"rho": 0.7}),
        ("tps", {"rho": 0.7}),
        ("svit", {"stochastic_inference": False}),
        ("vpp", {"stochastic_inference": False}),
    ],
)
def test_real_methods_agree_across_paths(method, params):
    torch.manual_seed(0)
    model = create_backbone("vit_tiny", method, params).eval()
    frames = torch.randn(2, 1, 3, 224, 224)
    with torch.no_grad():
        first = model(frames[0])
        outs = {p: model(frames[1], state=first.state, path=p) for p in ("masked", "gather")}
    assert torch.equal(outs["masked"].block_keep, outs["gather"].block_keep)
    torch.testing.assert_close(outs["gather"].features, outs["masked"].features, rtol=1e-5, atol=1e-5)


def test_shape_trace_inference_shrinks_each_block():
    model = create_backbone("vit_small", "dynamicvit", {"rho": 0.7}).eval()
    lengths = []
    for block in model.vit.blocks:
        block.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 224, 224))
    assert lengths == [196] * 3 + [137] * 3 + [96] * 3 + [67] * 3
    assert lengths == out.block_keep[:, 0].sum(-1).int().tolist()
    assert out.features.shape == (1, 384, 14, 14)


def test_dense_matches_timm_forward():
    model = create_backbone("vit_tiny", "dense").eval()
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = model(image).features.flatten(2).transpose(1, 2)
        reference = model.vit.forward_features(image)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_any_size_divisible_by_16():
    model = create_backbone("vit_tiny", "dynamicvit").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 160))
    assert out.features.shape == (2, 192, 6, 10)
    assert out.block_keep[-1, 0].sum() == int(60 * 0.7**3)


@pytest.mark.parametrize("method", ["vpp", "svit", "dynamicvit", "tps"])
def test_gradients_reach_every_selector_parameter(method):
    torch.manual_seed(0)
    model = create_backbone("vit_tiny", method).train()
    frames = torch.randn(2, 2, 3, 64, 64)  # two frames of a batch of 2 streams (VPP needs a chain)
    state, total = None, 0.0
    for t in range(2):
        out = model(frames[t], state=state)
        state = out.state
        total = total + out.features.pow(2).mean() + out.loss
    total.backward()
    missing = [n for n, p in model.method.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
