"""The two execution paths of PrunableViT compute the same function; inference really shrinks, compacting
the sequence once per stage."""

import pytest
import torch

from model_helpers import as_trained
from prunebench.models import create_backbone, method_names
from prunebench.models import vit as vit_module
from prunebench.models.pruning import MergingMethod, PruningMethod, Selection
from prunebench.models.registry import method_class
from prunebench.models.vit import PrunableViT


class FixedMasks(PruningMethod):
    """Test fixture: keeps the tokens of preset ``(B, N)`` masks at preset positions; at the ``rewrite``
    positions it also scales the features of its weighted candidates (as TPS rewrites its kept hosts)."""

    name = "fixed"
    Params = type(None)

    def __init__(self, masks, dim, depth, reactivates=False, rewrite=()):
        super().__init__(None, dim, depth)
        self.masks = masks
        self.reactivates = reactivates
        self.rewrite = rewrite

    @property
    def positions(self):
        return tuple(sorted(self.masks))

    def select(self, position, candidates, ctx):
        mask = self.masks[position].to(candidates.tokens.dtype)
        tokens = candidates.tokens * (1.0 + 0.5 * candidates.weight[..., None]) if position in self.rewrite else None
        return Selection(mask.gather(1, candidates.index), tokens=tokens)


def _masks(batch, n=196, ratios=((2, 0.7), (5, 0.45), (9, 0.2))):
    g = torch.Generator().manual_seed(1)
    return {p: (torch.rand(batch, n, generator=g) < r).float() for p, r in ratios}


def _model(masks, reactivates=False, rewrite=(), adapter="none"):
    torch.manual_seed(0)
    model = PrunableViT("vit_tiny", FixedMasks(masks, 192, 12, reactivates, rewrite), adapter=adapter).eval()
    return as_trained(model) if model.adapter is not None else model


def _both_paths(model, images, **kwargs):
    with torch.no_grad():
        return model(images, path="masked", **kwargs), model(images, path="gather", **kwargs)


def _assert_same_output(masked, gathered):
    """The same masks, records, features, state and pyramid (1e-5)."""
    assert torch.equal(masked.block_keep, gathered.block_keep)
    assert [r.position for r in gathered.records] == [r.position for r in masked.records]
    for a, b in zip(gathered.records, masked.records):
        assert torch.equal(a.keep, b.keep)
        torch.testing.assert_close(a.aux, b.aux, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gathered.features, masked.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gathered.state, masked.state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gathered.pyramid, masked.pyramid, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reactivates", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_masked_and_gather_paths_agree(batch, reactivates):
    model = _model(_masks(batch), reactivates)
    _assert_same_output(*_both_paths(model, torch.randn(batch, 3, 224, 224)))


@pytest.mark.parametrize("adapter", ["none", "vit_adapter"])
@pytest.mark.parametrize("reactivates", [False, True])
@pytest.mark.parametrize("nobody_left", [False, True])
def test_paths_agree_on_a_full_row_an_empty_row_and_rewritten_features(nobody_left, reactivates, adapter):
    """Sample 0 keeps every token at blocks 1-4 while sample 1 prunes (padded to all N); sample 1 (or, with
    ``nobody_left``, both) keeps none from block 9; the method rewrites its candidates' features at block 5."""
    masks = _masks(2, n=48, ratios=((1, 0.6), (5, 0.45), (9, 0.2)))
    masks[1][0] = 1.0
    masks[9][[0, 1] if nobody_left else [1]] = 0.0
    model = _model(masks, reactivates, rewrite=(5,), adapter=adapter)
    _assert_same_output(*_both_paths(model, torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))))


def _count_gathers_and_scatters(monkeypatch):
    """Count the gather path's gathers and scatters of token features."""
    counts = {"gather": 0, "scatter": 0}

    def counted(kind, function):
        def call(*args):
            counts[kind] += 1
            return function(*args)
        return call

    monkeypatch.setattr(vit_module, "gather_tokens", counted("gather", vit_module.gather_tokens))
    monkeypatch.setattr(vit_module, "_scatter", counted("scatter", vit_module._scatter))
    return counts


@pytest.mark.parametrize("reactivates", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_gather_path_compacts_once_per_stage(monkeypatch, batch, reactivates):
    """Pruning at blocks 2, 5 and 9: the kept tokens are gathered once at each position and scattered back once at
    the next one and at the end, not around every block (10 gathers and scatters for blocks 2-11)."""
    model = _model(_masks(batch, n=48), reactivates)
    counts = _count_gathers_and_scatters(monkeypatch)
    with torch.no_grad():
        model(torch.randn(batch, 3, 96, 128), path="gather")
    assert counts == {"gather": 3, "scatter": 3}


@pytest.mark.parametrize("reactivates, gathers", [(False, 6), (True, 5)])
def test_gather_path_with_the_adapter_compacts_once_per_stage_part(monkeypatch, reactivates, gathers):
    """Pruning at blocks 2, 5, 9 in the adapter's stages 0-2, 3-5, 6-8, 9-11: one gather and one scatter for each
    part of a stage whose kept set holds (2 | 3-4 | 5 | 6-8 | 9-11); the full map is rebuilt for the extractors
    and the injectors. Without reactivation the candidates at block 9 are gathered from the injected map too."""
    model = _model(_masks(1, n=48), reactivates, adapter="vit_adapter")
    counts = _count_gathers_and_scatters(monkeypatch)
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 128), path="gather")
    assert counts == {"gather": gathers, "scatter": 5}


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


PRUNING_METHODS = ["dense", "vpp", "dynamicvit", "tps", "svit", "random", "oracle"]
DETERMINISTIC = {"vpp": {"stochastic_inference": False}, "svit": {"stochastic_inference": False}}


def test_every_registered_pruning_method_is_compared_across_paths():
    merging = {name for name in method_names() if issubclass(method_class(name), MergingMethod)}
    assert sorted(PRUNING_METHODS) == sorted(set(method_names()) - merging)


@pytest.mark.parametrize("adapter", ["none", "vit_adapter"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("method", PRUNING_METHODS)
def test_every_method_agrees_across_paths(method, batch, adapter):
    """The second frame of a clip (VPP maps from the first), a batch of streams with different kept counts."""
    torch.manual_seed(0)
    model = create_backbone("vit_tiny", method, DETERMINISTIC.get(method), adapter=adapter).eval()
    if adapter != "none":
        as_trained(model)
    frames = torch.randn(2, batch, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    foreground = torch.rand(batch, 48, generator=torch.Generator().manual_seed(5)) < 0.3
    with torch.no_grad():
        first = model(frames[0], foreground=foreground)
        masked, gathered = (
            model(frames[1], state=first.state, foreground=foreground, path=path, generator=torch.Generator().manual_seed(0))
            for path in ("masked", "gather")
        )
    _assert_same_output(masked, gathered)


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
