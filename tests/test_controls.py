"""The random and oracle controls, the foreground patch mask, and every method's stage targets."""

import math

import pytest
import torch

from prunebench.data.pipeline import foreground_patches, patch_cover
from prunebench.errors import ConfigError
from prunebench.models import build_method, create_backbone, method_names
from prunebench.models.pruning import Candidates, FrameContext
from prunebench.models.vis_model import HeadConfig, VISModel

RHO = 0.6
GRID = (8, 10)
N = GRID[0] * GRID[1]
COUNTS = [math.floor(N * RHO**s) for s in (1, 2, 3)]  # 48, 28, 17
CONTROLS = ["random", "oracle"]


def _images(batch, seed=1):
    return torch.randn(batch, 3, 16 * GRID[0], 16 * GRID[1], generator=torch.Generator().manual_seed(seed))


def _foreground(batch, size, seed=2):
    """``(B, N)`` bool with exactly ``size`` random foreground patches per sample."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(N, generator=g) for _ in range(batch)])
    return torch.zeros(batch, N, dtype=torch.bool).scatter_(1, order[:, :size], True)


def _run(method, batch, training=False, seed=0, foreground_size=20, path=None, model=None):
    model = model or create_backbone("vit_tiny", method, {"rho": RHO})
    model.train(training)
    with torch.no_grad():
        return model(
            _images(batch), generator=torch.Generator().manual_seed(seed), path=path,
            foreground=_foreground(batch, foreground_size),
        )


def _stage_masks(out):
    return [r.keep > 0.5 for r in out.records]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("method", CONTROLS)
def test_exact_cumulative_counts(method, batch, training):
    out = _run(method, batch, training)
    masks = _stage_masks(out)
    assert [r.position for r in out.records] == [3, 6, 9]
    previous = torch.ones(batch, N, dtype=torch.bool)
    for mask, count in zip(masks, COUNTS):
        assert mask.sum(dim=1).tolist() == [count] * batch
        assert not (mask & ~previous).any()  # chosen among the previous stage's kept tokens
        previous = mask
    assert out.block_keep.sum(-1)[:, 0].int().tolist() == [N] * 3 + [c for c in COUNTS for _ in range(3)]


@pytest.mark.parametrize("method", CONTROLS)
def test_select_never_keeps_padding_or_inactive_candidates(method):
    model = build_method(method, {"rho": RHO}, 192, 12)
    weight = torch.ones(2, 30)
    weight[0, 25:] = 0  # padding of a shorter row (gather path, batch > 1)
    index = torch.arange(30).expand(2, -1)
    candidates = Candidates(torch.randn(2, 30, 192), weight, index, GRID)
    ctx = FrameContext(grid=GRID, training=False, foreground=torch.ones(2, N, dtype=torch.bool))
    keep = model.select(9, candidates, ctx).keep
    assert keep.sum(dim=1).tolist() == [COUNTS[2]] * 2
    assert not keep[0, 25:].any()


def test_oracle_keeps_all_foreground_when_the_count_allows():
    out = _run("oracle", 3, foreground_size=COUNTS[-1])
    foreground = _foreground(3, COUNTS[-1])
    for mask in _stage_masks(out):
        assert (mask | ~foreground).all()


@pytest.mark.parametrize("training", [False, True])
def test_oracle_keeps_only_foreground_when_it_exceeds_the_count(training):
    out = _run("oracle", 3, training, foreground_size=COUNTS[0] + 5)
    foreground = _foreground(3, COUNTS[0] + 5)
    for mask in _stage_masks(out):
        assert not (mask & ~foreground).any()


def test_oracle_mixes_foreground_first_then_background():
    size = (COUNTS[1] + COUNTS[2]) // 2  # between stage 2's and stage 3's counts
    masks = _stage_masks(_run("oracle", 2, foreground_size=size))
    foreground = _foreground(2, size)
    assert (masks[1] | ~foreground).all() and (masks[1] & ~foreground).any()
    assert not (masks[2] & ~foreground).any()


@pytest.mark.parametrize("method", CONTROLS)
def test_same_seed_same_masks(method):
    model = create_backbone("vit_tiny", method, {"rho": RHO})
    first, second = (_run(method, 2, seed=7, model=model) for _ in range(2))
    assert torch.equal(first.block_keep, second.block_keep)


def test_random_differs_across_seeds():
    model = create_backbone("vit_tiny", "random", {"rho": RHO})
    first, second = (_run("random", 2, seed=s, model=model) for s in (7, 8))
    assert not torch.equal(first.block_keep, second.block_keep)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("method", CONTROLS)
def test_masked_and_gather_paths_agree(method, batch):
    torch.manual_seed(0)
    model = create_backbone("vit_tiny", method, {"rho": RHO})
    outs = {p: _run(method, batch, path=p, model=model) for p in ("masked", "gather")}
    assert torch.equal(outs["masked"].block_keep, outs["gather"].block_keep)
    torch.testing.assert_close(outs["gather"].features, outs["masked"].features, rtol=1e-5, atol=1e-5)


def test_oracle_without_foreground_is_a_config_error():
    model = create_backbone("vit_tiny", "oracle").eval()
    with pytest.raises(ConfigError, match="oracle needs the ground-truth foreground.*evaluation supplies it"):
        model(_images(1))


def test_vis_model_passes_the_foreground_to_the_backbone():
    torch.manual_seed(0)
    model = VISModel(create_backbone("vit_tiny", "oracle", {"rho": RHO}), 5, HeadConfig(num_queries=4)).eval()
    foreground = _foreground(1, 10)
    with torch.no_grad():
        out = model(_images(1), foreground=foreground)
    assert (out.backbone.records[-1].keep.bool() | ~foreground).all()


@pytest.mark.parametrize("method", CONTROLS)
def test_controls_have_no_parameters_loss_or_image_dependence(method):
    model = create_backbone("vit_tiny", method, {"rho": RHO}).train()
    out = model(_images(2), foreground=_foreground(2, 10))
    assert model.method.num_parameters() == 0
    assert not model.method.image_dependent
    assert model.method.needs_foreground == (method == "oracle")
    assert float(out.loss) == 0.0


def test_controls_reject_the_learned_selectors_parameters():
    with pytest.raises(ConfigError, match="random: unknown key 'tau'; allowed: rho, positions"):
        build_method("random", {"tau": 1.0}, 192, 12)


def test_patch_cover_single_pixel():
    masks = torch.zeros(2, 32, 64)
    masks[0, 17, 33] = 1.0  # row 1, column 2 of a 2x4 patch grid
    cover = patch_cover(masks)
    assert cover.shape == (2, 8) and cover.dtype == torch.bool
    assert cover[0].nonzero().flatten().tolist() == [1 * 4 + 2]
    assert not cover[1].any()


def test_foreground_patches_is_the_union_and_empty_without_instances():
    masks = torch.zeros(2, 32, 64, dtype=torch.bool)
    masks[0, 0, 0] = masks[1, 31, 63] = True
    assert foreground_patches(masks).nonzero().flatten().tolist() == [0, 7]
    empty = foreground_patches(torch.zeros(0, 32, 64))
    assert empty.shape == (8,) and not empty.any()


SVIT_Q = [0.7] * 3 + [0.49] * 3 + [0.343] * 3
STAGE_TARGETS = {
    "dense": ({}, {}, ()),
    "vpp": ({}, {1: 0.7, 3: 0.56, 6: 0.448, 9: 0.3584}, (3, 6, 9)),
    "dynamicvit": ({"rho": 0.6}, {3: 0.6, 6: 0.36, 9: 0.216}, (3, 6, 9)),
    "tps": ({"rho": 0.6}, {3: 0.6, 6: 0.36, 9: 0.216}, (3, 6, 9)),
    "svit": ({}, dict(zip(range(3, 12), SVIT_Q)), tuple(range(3, 12))),
    "random": ({"rho": 0.6}, {3: 0.6, 6: 0.36, 9: 0.216}, ()),
    "oracle": ({"rho": 0.6}, {3: 0.6, 6: 0.36, 9: 0.216}, ()),
    # merging methods: keyed by the block after the merge (docs/methods.md §7)
    "evit": ({"kappa": 0.6}, {4: 0.6, 7: 0.36, 10: 0.216}, ()),
    "tome": ({"r": 13}, {b: (196 - 13 * b) / 196 for b in range(1, 12)}, ()),
}


def test_every_registered_method_has_a_stage_targets_case():
    assert sorted(STAGE_TARGETS) == method_names()


@pytest.mark.parametrize("method", sorted(STAGE_TARGETS))
def test_stage_targets_and_learned_stages(method):
    params, targets, learned = STAGE_TARGETS[method]
    built = build_method(method, params, 192, 12)
    assert built.stage_targets() == pytest.approx(targets)
    merged = [p + 1 for p in getattr(built, "merge_positions", ()) if p + 1 < built.depth]
    assert sorted(built.stage_targets()) == sorted([*built.positions, *merged])
    assert built.learned_stages() == learned


def test_vpp_without_map_sm_has_only_learned_stages():
    built = build_method("vpp", {"map_position": None}, 192, 12)
    assert built.stage_targets() == pytest.approx({3: 0.56, 6: 0.448, 9: 0.3584})
    assert built.learned_stages() == (3, 6, 9)
