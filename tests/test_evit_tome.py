"""EViT and ToMe (docs/methods.md §7; issue 12): token counts, cost anchors, unmerge, determinism, gradients."""

import pytest
import torch

from prunebench.errors import ConfigError
from prunebench.evaluation.accounting import TokenAccountant
from prunebench.evaluation.flops import backbone_cost
from prunebench.models import build_method, create_backbone
from prunebench.models.presets import implied_pkr, params_for_pkr

IMAGE = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
N = 196
# tokens entering the attention and the MLP of each block at 224×224 (no class token; docs/methods.md §7)
EVIT_FUSED = ([196] * 4 + [139] * 3 + [99] * 3 + [71] * 2, [196] * 3 + [139] * 3 + [99] * 3 + [71] * 3)
EVIT_PLAIN = ([196] * 4 + [138] * 3 + [97] * 3 + [68] * 2, [196] * 3 + [138] * 3 + [97] * 3 + [68] * 3)
TOME_R13 = ([196 - 13 * i for i in range(12)], [183 - 13 * i for i in range(12)])


def _record_lengths(model):
    """Sequence lengths entering each block's attention and MLP (the inputs of their norms)."""
    seen = {"attention": [], "mlp": []}
    for block in model.vit.blocks:
        block.norm1.register_forward_pre_hook(lambda m, args: seen["attention"].append(args[0].shape[1]))
        block.norm2.register_forward_pre_hook(lambda m, args: seen["mlp"].append(args[0].shape[1]))
    return seen


def _run(model, images=IMAGE, **kwargs):
    with torch.no_grad():
        return model(images, **kwargs)


def _patch_counts(out):
    return out.block_keep[:, 0].sum(-1).int().tolist()


@pytest.mark.parametrize("params, lengths", [({"kappa": 0.7}, EVIT_FUSED), ({"kappa": 0.7, "fuse": False}, EVIT_PLAIN)])
def test_evit_tokens_per_block(params, lengths):
    model = create_backbone("vit_tiny", "evit", params).eval()
    seen = _record_lengths(model)
    out = _run(model)
    assert (seen["attention"], seen["mlp"]) == lengths
    # the keep mask counts patches only: fused tokens (at most one per stage so far) have no cell
    fused_so_far = [0] * 4 + [1] * 3 + [2] * 3 + [3] * 2 if params.get("fuse", True) else [0] * 12
    for patches, tokens, fused in zip(_patch_counts(out), lengths[0], fused_so_far):
        assert tokens - fused <= patches <= tokens
    assert [r.position for r in out.records] == [3, 6, 9]


def test_tome_tokens_per_block():
    model = create_backbone("vit_tiny", "tome", {"r": 13}).eval()
    seen = _record_lengths(model)
    out = _run(model)
    assert (seen["attention"], seen["mlp"]) == TOME_R13
    assert _patch_counts(out) == TOME_R13[0]  # every merged token occupies the cell of its B token
    assert [r.position for r in out.records] == list(range(12))


def test_tome_merges_at_most_half_per_block():
    model = create_backbone("vit_tiny", "tome", {"r": 13}).eval()
    seen = _record_lengths(model)
    _run(model, torch.randn(1, 3, 64, 96))  # 24 tokens
    assert seen["attention"] == [24, 12, 6, 3, 2, 1] + [1] * 6


def test_tome_rate_merges_a_fraction_of_the_grid():
    model = create_backbone("vit_tiny", "tome", {"rate": 0.05}).eval()
    seen = _record_lengths(model)
    _run(model)
    merged = [int((block + 1) * 0.05 * N) for block in range(12)]  # cumulative ⌊(l + 1)·rate·N⌋
    assert seen["mlp"] == [N - m for m in merged]


@pytest.mark.parametrize(
    "method, params, anchor, measured",
    [
        ("evit", {"kappa": 0.7}, 3.036, 3.0116),  # anchor with a class token; 196 tokens, no class token here
        ("tome", {"r": 13}, 2.708, 2.6880),
    ],
)
def test_cost_anchors_small(method, params, anchor, measured):
    cost = backbone_cost(create_backbone("vit_small", method, params).eval(), IMAGE)
    assert cost.gmacs == pytest.approx(anchor, rel=0.02)
    assert cost.gmacs == pytest.approx(measured, abs=5e-4)


def test_cost_split_blocks_and_matching():
    evit = backbone_cost(create_backbone("vit_small", "evit").eval(), IMAGE)
    tome = backbone_cost(create_backbone("vit_small", "tome").eval(), IMAGE)
    assert evit.gmacs_pruner == 0  # ranking and fusing are element-wise: 0 MACs by the convention
    assert tome.gmacs - tome.gmacs_pruner == pytest.approx(2.6846, abs=5e-4)  # blocks, as the anchor (matching ignored)
    assert 0 < tome.gmacs_pruner < 0.005  # the |A|×|B| key similarities of the bipartite matching


def test_tome_unmerge_restores_the_dense_map():
    out = _run(create_backbone("vit_tiny", "tome", {"r": 13}).eval())
    assert out.features.shape == (1, 192, 14, 14)
    rows = out.features.flatten(2)[0].T  # (N, D): each patch holds the final features of its merged token
    assert torch.unique(rows, dim=0).shape[0] == TOME_R13[1][-1]


def test_tome_without_merges_is_the_dense_backbone():
    dense = create_backbone("vit_tiny", "dense").eval()
    expected = _run(dense).features
    for params in ({"r": 0}, {"rate": 1e-4}):  # r = 0: whole blocks; a tiny rate: split blocks, no merge at 196 tokens
        tome = create_backbone("vit_tiny", "tome", params).eval()
        tome.load_state_dict(dense.state_dict())
        assert torch.equal(_run(tome).features, expected), params


def test_evit_keeping_everything_is_the_dense_backbone():
    dense = create_backbone("vit_tiny", "dense").eval()
    evit = create_backbone("vit_tiny", "evit", {"kappa": 1.0}).eval()
    evit.load_state_dict(dense.state_dict())
    torch.testing.assert_close(_run(evit).features, _run(dense).features, rtol=1e-5, atol=1e-5)


def test_evit_dropped_tokens_keep_their_features_and_the_fused_token_reaches_the_kept_ones():
    fused = create_backbone("vit_tiny", "evit").eval()
    plain = create_backbone("vit_tiny", "evit", {"fuse": False}).eval()
    plain.load_state_dict(fused.state_dict())
    with_fusion, without = _run(fused), _run(plain)
    dropped_at_3 = with_fusion.block_keep[4, 0] == 0
    assert torch.equal(dropped_at_3, without.block_keep[4, 0] == 0)
    a, b = (o.features.flatten(2)[0] for o in (with_fusion, without))
    torch.testing.assert_close(a[:, dropped_at_3], b[:, dropped_at_3])  # frozen after block 3's attention
    kept_to_end = (with_fusion.block_keep[-1, 0] > 0) & (without.block_keep[-1, 0] > 0)
    assert not torch.allclose(a[:, kept_to_end], b[:, kept_to_end])


@pytest.mark.parametrize("method", ["evit", "tome"])
def test_deterministic_path_free_and_batch_independent(method):
    model = create_backbone("vit_tiny", method).eval()
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    first, second = _run(model, images), _run(model, images)
    assert torch.equal(first.features, second.features) and torch.equal(first.block_keep, second.block_keep)
    masked = _run(model, images, path="masked")
    assert torch.equal(first.features, masked.features) and torch.equal(first.block_keep, masked.block_keep)
    single = _run(model, images[1:])
    assert torch.equal(first.block_keep[:, 1:], single.block_keep)
    torch.testing.assert_close(first.features[1:], single.features, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["evit", "tome"])
def test_gradients_reach_every_backbone_parameter_and_the_input(method):
    model = create_backbone("vit_tiny", method).train()
    images = IMAGE.clone().requires_grad_(True)
    out = model(images)
    (out.features.pow(2).mean() + out.loss).backward()
    missing = [n for n, p in model.vit.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    per_patch = images.grad.abs().reshape(3, 14, 16, 14, 16).sum(dim=(0, 2, 4))
    assert (per_patch > 0).all()  # every patch feeds the dense map (frozen, merged or kept)
    assert model.method.num_parameters() == 0 and float(out.loss) == 0.0


def test_evit_dropped_patch_gets_no_gradient_from_later_layers():
    model = create_backbone("vit_tiny", "evit").eval()
    out = model(IMAGE)
    dropped = int((out.block_keep[4, 0] == 0).nonzero()[0, 0])
    blocks = model.vit.blocks
    wrt = [blocks[3].attn.qkv.weight, blocks[3].mlp.fc1.weight, blocks[11].attn.qkv.weight]
    grads = torch.autograd.grad(out.features.flatten(2)[0, :, dropped].sum(), wrt, allow_unused=True)
    assert grads[0].abs().sum() > 0
    assert all(g is None or not g.any() for g in grads[1:])


def test_parameters_are_checked():
    with pytest.raises(ConfigError, match=r"evit: kappa=0.0 is outside \(0, 1\]"):
        build_method("evit", {"kappa": 0.0}, 192, 12)
    with pytest.raises(ConfigError, match="tome: r=-1 is negative"):
        build_method("tome", {"r": -1}, 192, 12)
    with pytest.raises(ConfigError, match=r"tome: rate=0.7 is outside \[0, 0.5\]"):
        build_method("tome", {"rate": 0.7}, 192, 12)


def test_implied_pkr():
    kappa = 0.7
    assert implied_pkr("evit", {"kappa": kappa}) == pytest.approx((4 + 3 * kappa + 3 * kappa**2 + 2 * kappa**3) / 12)
    assert implied_pkr("tome", {"r": 13}) == pytest.approx(sum(TOME_R13[0]) / (12 * N))  # on the 224×224 grid
    assert implied_pkr("tome", {"rate": 0.05}) == pytest.approx(1 - 5.5 * 0.05)
    assert implied_pkr("tome", {"r": 0}) == 1.0


@pytest.mark.parametrize("method", ["evit", "tome"])
@pytest.mark.parametrize("pkr", [0.40, 0.55, 0.70])
def test_keep_family_reaches_the_goals(method, pkr):
    assert implied_pkr(method, params_for_pkr(method, pkr)) == pytest.approx(pkr, abs=1e-3)


def test_tome_rate_gives_the_same_pkr_on_a_smaller_grid():
    model = create_backbone("vit_tiny", "tome", params_for_pkr("tome", 0.55)).eval()
    accountant = TokenAccountant()
    accountant.update(_run(model, torch.randn(1, 3, 128, 224)).block_keep)  # 112 tokens
    assert accountant.pkr == pytest.approx(0.55, abs=0.01)


def test_evit_pkr_floor_with_positions_3_6_9():
    with pytest.raises(ConfigError, match="evit: a setting at PKR 0.32 is out of reach"):
        params_for_pkr("evit", 0.32)  # blocks 0-3 are dense: PKR > 1/3


@pytest.mark.parametrize("name", ["evit", "tome"])
def test_search_spaces_load(name):
    from prunebench.search_spaces.loader import load_space

    space = load_space(name)
    assert space.method == name and space.dimensions
