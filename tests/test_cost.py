"""Cost accounting against the published anchors (docs/methods.md §1.5, §10; issue 2)."""

import json
import math

import numpy as np
import pytest
import torch

from prunebench.evaluation.accounting import TokenAccountant
from prunebench.evaluation.flops import backbone_cost
from prunebench.evaluation.vis_eval import CountedBackbone
from prunebench.models import create_backbone

IMAGE = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _cost(backbone, method, **params):
    model = create_backbone(backbone, method, params).eval()
    cost = backbone_cost(model, IMAGE)
    accountant = TokenAccountant()
    accountant.update(cost.output.block_keep)
    return cost, accountant


@pytest.mark.parametrize("backbone, expected", [("vit_tiny", 1.251), ("vit_small", 4.583)])
def test_dense_gmacs_without_class_token(backbone, expected):
    cost, accountant = _cost(backbone, "dense")
    assert cost.gmacs == pytest.approx(expected, rel=0.005)
    assert cost.gmacs_pruner == 0
    assert accountant.pkr == 1.0


def test_dynamicvit_rho07_small():
    cost, accountant = _cost("vit_small", "dynamicvit", rho=0.7)
    assert accountant.per_block_tokens == [196.0] * 3 + [137.0] * 3 + [96.0] * 3 + [67.0] * 3
    assert 2.84 <= cost.gmacs <= 2.99
    assert cost.gmacs - cost.gmacs_pruner == pytest.approx(2.86, abs=0.01)  # blocks only
    assert cost.gmacs == pytest.approx(2.96, abs=0.01)  # with its predictors


def test_tps_rho07_small():
    cost, accountant = _cost("vit_small", "tps", rho=0.7)
    assert accountant.per_block_tokens[3:] == [137.0] * 3 + [96.0] * 3 + [67.0] * 3
    assert 2.91 <= cost.gmacs <= 3.03


@pytest.mark.parametrize("method", ["dynamicvit", "tps"])
@pytest.mark.parametrize("rho, pkr", [(0.6, 0.542), (0.4, 0.404)])
def test_pkr_of_geometric_schedules(method, rho, pkr):
    _, accountant = _cost("vit_small", method, rho=rho)
    assert accountant.pkr == pytest.approx(pkr, abs=0.003)
    kept = [math.floor(196 * rho**s) for s in (1, 2, 3)]
    assert accountant.per_block_tokens[3::3] == [float(k) for k in kept]


@pytest.mark.parametrize(
    "backbone, method, expected",
    [
        ("vit_small", "vpp", 188_840),
        ("vit_small", "svit", 341_298),
        ("vit_small", "dynamicvit", 723_750),
        ("vit_small", "tps", 723_750),
        ("vit_small", "dense", 0),
        ("vit_tiny", "vpp", 48_344),
        ("vit_tiny", "svit", 87_714),
        ("vit_tiny", "dynamicvit", 182_166),
    ],
)
def test_pruner_parameters(backbone, method, expected):
    assert create_backbone(backbone, method).method.num_parameters() == expected


def test_vpp_map_sm_cost_is_counted():
    model = create_backbone("vit_tiny", "vpp", {"stochastic_inference": False}).eval()
    first = backbone_cost(model, IMAGE)
    second = backbone_cost(model, IMAGE, state=first.output.state)
    n, d = 196, 192
    # similarity N×N'×D plus the Map-SM scorer; SM selectors run on both frames
    assert second.gmacs_pruner - first.gmacs_pruner >= n * n * d / 1e9


@pytest.mark.parametrize("method, params", [("random", {"rho": 0.7}), ("dynamicvit", {"rho": 0.7}), ("vpp", {})])
def test_evaluation_counts_equal_a_count_of_every_frame(method, params):
    """The evaluation counts an image-independent method once per input size: every frame's GMACs, output and
    random draws are those of counting that frame (an image-dependent one, VPP, is counted every frame)."""
    model = create_backbone("vit_tiny", method, params).eval()
    counted = CountedBackbone(model)
    frames = [torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(i))
              for i, size in enumerate([(64, 96)] * 3 + [(96, 64)] * 2 + [(64, 96)])]
    generator, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    state = reference_state = None
    with torch.inference_mode():
        for image in frames:
            output, gmacs = counted(image, state=state, generator=generator)
            expected = backbone_cost(model, image, state=reference_state, generator=reference)
            assert gmacs == expected.gmacs
            assert torch.equal(output.block_keep, expected.output.block_keep)
            assert torch.equal(output.features, expected.output.features)
            state, reference_state = output.state, expected.output.state
    assert set(counted.per_size) == {(64, 96), (96, 64)}

def test_accountant_averages_over_frames():
    acc = TokenAccountant()
    acc.update(torch.ones(12, 1, 10))
    half = torch.ones(12, 1, 10)
    half[6:, :, 5:] = 0
    acc.update(half)
    assert acc.frames == 2
    assert acc.per_block_keep[:6] == [1.0] * 6 and acc.per_block_keep[6:] == [0.75] * 6
    assert acc.pkr == pytest.approx(0.875)


def test_accountant_weighs_every_frame_alike_whatever_its_size():
    """A 10-token frame keeping 40 % and a 40-token frame keeping 60 %: PKR 0.5, not the token-weighted 0.56."""
    acc = TokenAccountant()
    small, large = torch.zeros(12, 1, 10), torch.zeros(12, 1, 40)
    small[:, :, :4] = 1
    large[:, :, :24] = 1
    acc.update(small)
    acc.update(large)
    assert acc.pkr == pytest.approx(0.5)
    assert acc.per_block_tokens == pytest.approx([14.0] * 12)


def test_flops_over_real_frames(tmp_path):
    from prunebench.data.synth import SynthSpec, generate
    from prunebench.evaluation.cost import measure_flops

    generate(tmp_path / "d", SynthSpec(videos=1, valid_videos=2, frames=3, height=64, width=96))
    result = measure_flops("vit_tiny", "svit", {}, (64, 96), data=str(tmp_path / "d"))
    assert result["frames"] == 6 and 0 < result["pkr"] < 1
    assert result["gmacs"] < result["gmacs_dense"]
    vpp = measure_flops("vit_tiny", "vpp", {"kappa": 0.5}, (64, 96), data=str(tmp_path / "d"), max_frames=4)
    assert vpp["frames"] == 4
    # frames 1 and 2 of the first video carry state: their Map-SM keeps ⌊0.5·24⌋ = 12 tokens in blocks 1-2
    assert vpp["per_block_tokens"][1] == pytest.approx((24 + 12 + 12 + 24) / 4)


def _enlarge_valid_video(root, index: int, factor: int) -> None:
    """Make valid video ``index`` of a synthetic dataset ``factor`` times larger: frames, masks, boxes, areas."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    path = root / "annotations" / "instances_valid.json"
    data = json.loads(path.read_text())
    video = data["videos"][index]
    for name in video["file_names"]:
        frame = root / "valid" / "JPEGImages" / name
        with Image.open(frame) as image:
            image.resize((image.width * factor, image.height * factor)).save(frame)
    for track in (a for a in data["annotations"] if a["video_id"] == video["id"]):
        masks = [None if s is None else np.kron(mask_utils.decode(s), np.ones((factor, factor), np.uint8))
                 for s in track["segmentations"]]
        track["segmentations"] = [None if m is None else {**(rle := mask_utils.encode(np.asfortranarray(m))),
                                                          "counts": rle["counts"].decode()} for m in masks]
        track["bboxes"] = [None if b is None else [v * factor for v in b] for b in track["bboxes"]]
        track["areas"] = [None if a is None else a * factor ** 2 for a in track["areas"]]
        track["height"], track["width"] = video["height"] * factor, video["width"] * factor
    video["height"], video["width"] = video["height"] * factor, video["width"] * factor
    path.write_text(json.dumps(data))


def test_dense_reference_cost_is_a_mean_over_frames_of_every_size(tmp_path):
    """Three valid videos of 3 frames, two at 64x96 and one at 128x192: for the dense model the reference cost
    equals its own cost, a mean over the 9 frames (a mean over the 2 sizes would weigh 3 large frames as 6)."""
    from platform_helpers import write_config
    from prunebench.config import load_config
    from prunebench.evaluation.vis_eval import evaluate
    from prunebench.training.protocol import load_datasets, prepare_stage

    config = load_config(write_config(tmp_path, data={"synth": {"videos": 1, "valid_videos": 3, "frames": 3,
                                                                "height": 64, "width": 96, "seed": 0}},
                                      method={"name": "dense", "params": {}}))
    load_datasets(config)
    _enlarge_valid_video(tmp_path / "data", 2, 2)
    prepared = prepare_stage(config, "finetune")
    metrics = evaluate(prepared.model, prepared.valid, config.eval, timing=False).metrics
    small, large = (backbone_cost(create_backbone("vit_tiny", "dense"), torch.zeros(1, 3, *size)).gmacs
                    for size in ((64, 96), (128, 192)))
    assert metrics["gmacs_dense"] == pytest.approx(metrics["gmacs"]) == pytest.approx((2 * small + large) / 3)
