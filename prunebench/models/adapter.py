"""ViT-Adapter (Chen et al., ICLR 2023), the dense-prediction backbone the VPP paper prunes through.

Around the plain ViT of a ``PrunableViT``:

- **Spatial prior module (SPM)**: a small CNN on the image. Its stem gives a stride-4 map; three
  stride-2 convolutions give the stride 8, 16, 32 maps. All are projected to the ViT width D; the
  three coarse maps, flattened and concatenated with a learned level embedding, are the adapter's
  token set ``c``.
- **Interaction stages** (blocks 0-2, 3-5, 6-8, 9-11 of a 12-block ViT). Before the first block of a
  stage an **injector** updates the ViT tokens from the spatial prior,
  ``x ← x + γ ⊙ DeformAttn(LN(x), LN(c))`` (queries: the ViT tokens; values: the three ``c`` levels).
  After the last block an **extractor** updates the prior from the ViT,
  ``c ← c + DeformAttn(LN(c), LN(x))`` (one value level: the ViT map), then ``c ← c + ConvFFN(LN(c))``.
  The last stage has two more extractors.
- **Output pyramid** (strides 4, 8, 16, 32, D channels each): ``c`` split back into its maps, the
  stride-4 level is the SPM's stride-4 map plus the stride-8 level upsampled by a transposed
  convolution; the ViT's final map, resized to each level, is added; BatchNorm per level.

Sizes are ViT-Adapter-T/S's (``czczup/ViT-Adapter`` Mask R-CNN configs): 6 deformable heads, 4 sampling
points, value ratio 1.0 (the value projection keeps D channels), ConvFFN hidden ratio 0.25, SPM width 64,
and γ initialised to 0 (``init_values=0``), so that a fresh adapter leaves the pretrained ViT's
tokens untouched until γ is learned. One deliberate difference: the ViT map added to the output
is the one after the ViT's final LayerNorm (``PrunableViT``'s ``features``), where ViT-Adapter adds
the last block's raw output and leaves that norm unused.

Multi-scale deformable attention is transformers' own pure-PyTorch module (the one in its
Mask2Former pixel decoder, sampling with ``grid_sample``): no compiled operator.

Pruning: ``PrunableViT`` calls ``Interaction.before_block`` on the full N-token map on both execution
paths, so the injectors update every token, pruned ones included (on the gather path the blocks then
gather the kept tokens of that updated map once for the stage); the blocks still run on the kept tokens
only; the extractors read the full map, pruned tokens with their frozen values (on the gather path the
stage's compact sequence is scattered back into it once, before them). Merging methods (EViT, ToMe)
hand the adapter the same dense map; a token of their shortened sequence takes the mean of its
patches' injected features (``prunebench.models.merging``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

DEFORM_HEADS = 6
DEFORM_POINTS = 4
CFFN_RATIO = 0.25
SPM_WIDTH = 64
STAGES = 4
EXTRA_EXTRACTORS = 2  # on the last stage
LN_EPS = 1e-6

Shapes = list[tuple[int, int]]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPrior(nn.Module):
    """The SPM: image → stride-4 map and the stride 8, 16, 32 maps, each with D channels."""

    def __init__(self, dim: int):
        super().__init__()
        width = SPM_WIDTH
        self.stem = nn.Sequential(
            *_conv_bn_relu(3, width, 2), *_conv_bn_relu(width, width, 1), *_conv_bn_relu(width, width, 1),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.down8 = nn.Sequential(*_conv_bn_relu(width, 2 * width, 2))
        self.down16 = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width, 2))
        self.down32 = nn.Sequential(*_conv_bn_relu(4 * width, 4 * width, 2))
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in (width, 2 * width, 4 * width, 4 * width))

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` → ``[(B, D, H/4, W/4), (B, D, H/8, W/8), (B, D, H/16, W/16), (B, D, ⌈H/32⌉, ⌈W/32⌉)]``."""
        s4 = self.stem(images)
        s8 = self.down8(s4)
        s16 = self.down16(s8)
        s32 = self.down32(s16)
        return [proj(m) for proj, m in zip(self.proj, (s4, s8, s16, s32))]


class DeformableReadout(nn.Module):
    """``DeformAttn(LN(query), LN(values))``: each query samples ``DEFORM_POINTS`` points per head and level
    around its reference point in the value maps (transformers' multi-scale deformable attention)."""

    def __init__(self, dim: int, levels: int):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.value_norm = nn.LayerNorm(dim, eps=LN_EPS)
        # transformers is imported with the first adapter built: plain-ViT models and the commands' checks skip it
        from transformers.models.mask2former.modeling_mask2former import (
            Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention as MultiScaleDeformableAttention,
        )

        self.attn = MultiScaleDeformableAttention(dim, DEFORM_HEADS, levels, DEFORM_POINTS)

    def forward(self, query: Tensor, values: Tensor, reference: Tensor, shapes: Shapes, starts: Tensor) -> Tensor:
        """``query`` ``(B, Nq, D)`` with reference points ``(1, Nq, 1, 2)`` in [0, 1] (x, y); ``values``
        ``(B, Σ h·w, D)``, the maps of ``shapes`` flattened in order, starting at ``starts``."""
        out, _ = self.attn(
            hidden_states=self.query_norm(query), encoder_hidden_states=self.value_norm(values),
            reference_points=reference, spatial_shapes_list=shapes, level_start_index=starts,
        )
        return out


class ConvFFN(nn.Module):
    """``Linear → 3×3 depthwise conv on each level's map → GELU → Linear`` over the ``c`` tokens."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: Tensor, shapes: Shapes) -> Tensor:
        hidden = self.fc1(tokens)
        batch, _, channels = hidden.shape
        levels = hidden.split([h * w for h, w in shapes], dim=1)
        convolved = [
            self.dwconv(level.transpose(1, 2).reshape(batch, channels, h, w)).flatten(2).transpose(1, 2)
            for level, (h, w) in zip(levels, shapes)
        ]
        return self.fc2(F.gelu(torch.cat(convolved, dim=1)))


class Injector(nn.Module):
    """``x ← x + γ ⊙ DeformAttn(LN(x), LN(c))`` over the three prior levels; γ starts at 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.read = DeformableReadout(dim, levels=3)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, c: Tensor, reference: Tensor, shapes: Shapes, starts: Tensor) -> Tensor:
        return x + self.gamma * self.read(x, c, reference, shapes, starts)


class Extractor(nn.Module):
    """``c ← c + DeformAttn(LN(c), LN(x))`` over the ViT map, then ``c ← c + ConvFFN(LN(c))``."""

    def __init__(self, dim: int, drop_path_rate: float):
        super().__init__()
        self.read = DeformableReadout(dim, levels=1)
        self.ffn_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.ffn = ConvFFN(dim, int(dim * CFFN_RATIO))
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, c: Tensor, x: Tensor, reference: Tensor, grid: Shapes, starts: Tensor, c_shapes: Shapes) -> Tensor:
        c = c + self.read(c, x, reference, grid, starts)
        return c + self.drop_path(self.ffn(self.ffn_norm(c), c_shapes))


class InteractionStage(nn.Module):
    """One injector (before the stage's first block) and its extractors (after its last block)."""

    def __init__(self, dim: int, extractors: int, drop_path_rate: float):
        super().__init__()
        self.injector = Injector(dim)
        self.extractors = nn.ModuleList(Extractor(dim, drop_path_rate) for _ in range(extractors))


class ViTAdapter(nn.Module):
    """The adapter's modules for a ViT of width ``dim`` and ``depth`` blocks (4 interaction stages);
    ``drop_path_rate`` is the stochastic depth of the extractors' ConvFFN, as ViT-Adapter's."""

    def __init__(self, dim: int, depth: int, drop_path_rate: float = 0.0):
        super().__init__()
        span = depth // STAGES
        #: block index → stage, for the first and the last block of each stage
        self.stage_starts = {k * span: k for k in range(STAGES)}
        self.stage_ends = {(k + 1) * span - 1 if k < STAGES - 1 else depth - 1: k for k in range(STAGES)}
        self.spm = SpatialPrior(dim)
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.stages = nn.ModuleList(
            InteractionStage(dim, 1 + (EXTRA_EXTRACTORS if k == STAGES - 1 else 0), drop_path_rate)
            for k in range(STAGES)
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.norms = nn.ModuleList(nn.BatchNorm2d(dim) for _ in range(4))
        self.apply(_init_weights)
        nn.init.normal_(self.level_embed)

    def start(self, images: Tensor, grid: tuple[int, int]) -> Interaction:
        """Run the SPM on ``images`` (ViT token grid ``grid``) and return this forward's interaction."""
        s4, *levels = self.spm(images)
        shapes = [(m.shape[-2], m.shape[-1]) for m in levels]
        c = torch.cat([m.flatten(2).transpose(1, 2) + e for m, e in zip(levels, self.level_embed)], dim=1)
        return Interaction(self, c, s4, shapes, grid)

    def num_parameters(self) -> int:
        """Parameters the adapter adds to the ViT."""
        return sum(p.numel() for p in self.parameters())


def _level_starts(shapes: Shapes, device: torch.device) -> Tensor:
    sizes = torch.tensor([h * w for h, w in shapes], device=device)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def _cell_centres(shapes: Shapes, device: torch.device) -> Tensor:
    """Reference points ``(1, Σ h·w, 1, 2)``: the (x, y) centre of every cell of each map, in [0, 1]."""
    points = []
    for h, w in shapes:
        y, x = torch.meshgrid((torch.arange(h, device=device) + 0.5) / h, (torch.arange(w, device=device) + 0.5) / w,
                              indexing="ij")
        points.append(torch.stack([x.flatten(), y.flatten()], dim=-1))
    return torch.cat(points)[None, :, None, :]


class Interaction:
    """The adapter's state during one ``PrunableViT`` forward: the prior tokens ``c`` and the geometry.

    ``PrunableViT`` calls ``before_block(i, x)`` before each block that ``injects`` and ``after_block(i, x)``
    after each block that ``extracts``, with the full ``(B, N, D)`` token map, then ``pyramid(features)``
    with the final ``(B, D, h, w)`` map.
    """

    def __init__(self, adapter: ViTAdapter, c: Tensor, s4: Tensor, shapes: Shapes, grid: tuple[int, int]):
        self.adapter = adapter
        self.c = c
        self.s4 = s4
        self.shapes = shapes
        self.grid: Shapes = [grid]
        self.grid_reference = _cell_centres(self.grid, c.device)
        self.grid_starts = _level_starts(self.grid, c.device)
        self.c_reference = _cell_centres(shapes, c.device)
        self.c_starts = _level_starts(shapes, c.device)

    def injects(self, block: int) -> bool:
        """Whether an injector updates the token map before ``block`` (the first block of a stage)."""
        return block in self.adapter.stage_starts

    def extracts(self, block: int) -> bool:
        """Whether extractors read the token map after ``block`` (the last block of a stage)."""
        return block in self.adapter.stage_ends

    def before_block(self, block: int, x: Tensor) -> Tensor:
        """Inject the prior into every token of ``x`` before ``block``, the first block of a stage (``injects``)."""
        injector = self.adapter.stages[self.adapter.stage_starts[block]].injector
        return injector(x, self.c, self.grid_reference, self.shapes, self.c_starts)

    def after_block(self, block: int, x: Tensor) -> None:
        """Update ``c`` from the full token map ``x`` after ``block``, the last block of a stage (``extracts``)."""
        for extractor in self.adapter.stages[self.adapter.stage_ends[block]].extractors:
            self.c = extractor(self.c, x, self.c_reference, self.grid, self.grid_starts, self.shapes)

    def pyramid(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The strides 4/8/16/32 maps (D channels) from ``c`` and the ViT's final map ``features``."""
        batch, dim = features.shape[:2]
        s8, s16, s32 = (
            level.transpose(1, 2).reshape(batch, dim, h, w)
            for level, (h, w) in zip(self.c.split([h * w for h, w in self.shapes], dim=1), self.shapes)
        )
        s4 = self.adapter.up(s8) + self.s4
        maps = []
        for level, norm in zip((s4, s8, s16, s32), self.adapter.norms):
            vit = features if level.shape[-2:] == features.shape[-2:] else F.interpolate(
                features, size=level.shape[-2:], mode="bilinear", align_corners=False)
            maps.append(norm(level + vit))
        return maps[0], maps[1], maps[2], maps[3]


def _reset_deformable(attn: nn.Module) -> None:
    """Deformable DETR's initialisation: zero offset weights, offset biases on rays (head h at angle
    2πh/heads, point p at distance p + 1), uniform attention, Xavier projections."""
    nn.init.zeros_(attn.sampling_offsets.weight)
    angles = torch.arange(attn.n_heads, dtype=torch.float32) * (2 * math.pi / attn.n_heads)
    rays = torch.stack([angles.cos(), angles.sin()], dim=-1)
    rays = rays / rays.abs().max(dim=-1, keepdim=True).values
    distance = torch.arange(1, attn.n_points + 1, dtype=torch.float32)
    bias = rays[:, None, None, :] * distance[None, None, :, None]
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(bias.expand(-1, attn.n_levels, -1, -1).flatten())
    nn.init.zeros_(attn.attention_weights.weight)
    nn.init.zeros_(attn.attention_weights.bias)
    for proj in (attn.value_proj, attn.output_proj):
        nn.init.xavier_uniform_(proj.weight)
        nn.init.zeros_(proj.bias)


def _init_weights(module: nn.Module) -> None:
    """ViT-Adapter's initialisation of its own modules (the ViT keeps its weights)."""
    if isinstance(module, DeformableReadout):
        _reset_deformable(module.attn)  # after its Linear children, which ``apply`` visits first
    elif isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
