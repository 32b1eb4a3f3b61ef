"""The ``prunebench flops`` measurement: GMACs, PKR and token counts of a configured backbone."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from prunebench.data.pipeline import prepare_image
from prunebench.data.ytvis import YTVISDataset
from prunebench.errors import ConfigError
from prunebench.evaluation.accounting import TokenAccountant
from prunebench.evaluation.flops import backbone_cost
from prunebench.models.registry import AdapterName
from prunebench.models.vit import check_image_size, create_backbone
from prunebench.progress import Progress
from prunebench.validation import to_dict

log = logging.getLogger(__name__)
MAC_UNIT = "GMACs (multiply-accumulates, fvcore convention; GFLOPs = 2 x GMACs)"


def _video_frames(data: str, split: str, img_size: tuple[int, int], max_frames: int) -> Iterator[tuple[bool, torch.Tensor]]:
    """(first frame of its video?, normalised frame resized to ``img_size``) over a YouTube-VIS split."""
    dataset = YTVISDataset(data, split)
    total = min(max_frames, sum(len(video) for video in dataset.videos))
    with Progress("flops", total, "frames", logger=log) as progress:
        for video in dataset.videos:
            for t in range(len(video)):
                if progress.count >= max_frames:
                    return
                image = prepare_image(video.load_frame(t), None)[:, :video.height, :video.width]
                yield t == 0, F.interpolate(image[None], size=img_size, mode="bilinear", align_corners=False)
                progress.update()


def measure_flops(
    backbone: str,
    method: str,
    params: dict[str, Any],
    img_size: tuple[int, int],
    data: str | None = None,
    seed: int = 0,
    split: str = "valid",
    max_frames: int = 200,
    adapter: AdapterName = "none",
) -> dict[str, Any]:
    """Cost per frame of ``method`` on ``backbone`` at ``img_size`` (batch 1, inference path).

    With an ``adapter`` the counts cover the adapter too (``gmacs``, ``gmacs_dense``: the whole
    backbone); the result then also gives the adapter's own share ``gmacs_adapter`` and its
    parameters ``adapter_params``.

    Methods with a fixed keep schedule can be counted on one random frame; methods whose kept count
    depends on the image need real frames: ``data`` (a YouTube-VIS folder), whose ``split`` is read in
    video order (temporal state carried, noise seeded) for at most ``max_frames`` frames. The weights
    are random unless the method is dense, so this measures the pruning machinery, not a trained model.
    """
    check_image_size(*img_size)
    torch.manual_seed(seed)
    model = create_backbone(backbone, method, params, adapter=adapter).eval()
    dense = create_backbone(backbone, "dense", adapter=adapter).eval()
    if data is None and model.method.image_dependent:
        raise ConfigError(
            f"method '{method}' keeps an image-dependent number of tokens; pass --data DIR "
            "(a YouTube-VIS folder) to average its cost over real frames"
        )
    if data is None:
        frames: Iterator[tuple[bool, torch.Tensor]] = iter([(True, torch.randn(1, 3, *img_size, generator=torch.Generator().manual_seed(seed)))])
    else:
        frames = _video_frames(data, split, img_size, max_frames)
    accountant, gmacs, pruner, adapter_gmacs, state = TokenAccountant(), [], [], [], None
    generator = torch.Generator().manual_seed(seed)
    image = None
    for first, image in frames:
        cost = backbone_cost(model, image, state=None if first else state, generator=generator)
        accountant.update(cost.output.block_keep)
        gmacs.append(cost.gmacs)
        pruner.append(cost.gmacs_pruner)
        adapter_gmacs.append(cost.gmacs_adapter)
        state = cost.output.state
    if image is None:
        raise ConfigError(f"--data {data}: split '{split}' has no frames")
    result = {
        "backbone": backbone,
        "adapter": adapter,
        "method": method,
        "params": to_dict(model.method.params),
        "img_size": list(img_size),
        "unit": MAC_UNIT,
        "frames": accountant.frames,
        "gmacs": sum(gmacs) / len(gmacs),
        "gmacs_pruner": sum(pruner) / len(pruner),
        "gmacs_dense": backbone_cost(dense, image).gmacs,
        "pkr": accountant.pkr,
        "per_block_tokens": accountant.per_block_tokens,
        "pruner_params": model.method.num_parameters(),
    }
    if model.adapter is not None:
        result["gmacs_adapter"] = sum(adapter_gmacs) / len(adapter_gmacs)
        result["adapter_params"] = model.adapter.num_parameters()
    return result
