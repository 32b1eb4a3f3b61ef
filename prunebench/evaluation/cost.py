"""The ``prunebench flops`` measurement: GMACs, PKR and token counts of a configured backbone."""

from __future__ import annotations

from typing import Any

import torch

from prunebench.errors import ConfigError
from prunebench.evaluation.accounting import TokenAccountant
from prunebench.evaluation.flops import backbone_cost
from prunebench.models.vit import check_image_size, create_backbone
from prunebench.typed import to_dict

MAC_UNIT = "GMACs (multiply-accumulates, fvcore convention; GFLOPs = 2 x GMACs)"


def measure_flops(
    backbone: str,
    method: str,
    params: dict[str, Any],
    img_size: tuple[int, int],
    data: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Cost per frame of ``method`` on ``backbone`` at ``img_size`` (batch 1, inference path).

    Methods with a fixed keep schedule are counted on one random frame; methods whose kept count
    depends on the image need real frames (``data``).
    """
    check_image_size(*img_size)
    torch.manual_seed(seed)
    model = create_backbone(backbone, method, params).eval()
    dense = create_backbone(backbone, "dense").eval()
    if data is not None:
        raise ConfigError(
            f"--data {data}: averaging over real frames needs the YouTube-VIS reader "
            "(prunebench.data), which this version does not have yet"
        )
    if model.method.image_dependent:
        raise ConfigError(
            f"method '{method}' keeps an image-dependent number of tokens; pass --data DIR "
            "(a YouTube-VIS folder) to average its cost over real frames"
        )
    image = torch.randn(1, 3, *img_size, generator=torch.Generator().manual_seed(seed))
    cost = backbone_cost(model, image)
    accountant = TokenAccountant()
    accountant.update(cost.output.block_keep)
    return {
        "backbone": backbone,
        "method": method,
        "params": to_dict(model.method.params),
        "img_size": list(img_size),
        "unit": MAC_UNIT,
        "frames": accountant.frames,
        "gmacs": cost.gmacs,
        "gmacs_pruner": cost.gmacs_pruner,
        "gmacs_dense": backbone_cost(dense, image).gmacs,
        "pkr": accountant.pkr,
        "per_block_tokens": accountant.per_block_tokens,
        "pruner_params": model.method.num_parameters(),
    }
