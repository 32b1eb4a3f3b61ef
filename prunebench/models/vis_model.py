"""The VIS network: PrunableViT → pyramid → Mask2Former (transformers) per frame.

The Mask2Former pixel decoder, masked-attention transformer decoder and loss (Hungarian
matching, class + mask BCE + dice on sampled points) are transformers' own. Its backbone is
replaced by a stand-in that returns the strides 4/8/16/32 maps: those a ViTDet-style simple pyramid
builds from the PrunableViT's dense stride-16 map (docs/platform.md §3), or, when the backbone has a
ViT-Adapter, the adapter's own 4-level output (D channels each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    SwinConfig,
)
from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder
from transformers.utils import ModelOutput

from prunebench.models.head_config import HeadConfig
from prunebench.models.vit import BackboneOutput, PrunableViT


class SimplePyramid(nn.Module):
    """ViTDet-style strides 4/8/16/32 from one stride-16 map (deconvolutions, 1x1 conv, pooling)."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.s4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), nn.GroupNorm(1, dim // 2), nn.GELU(),
            nn.ConvTranspose2d(dim // 2, channels, 2, stride=2),
        )
        self.s8 = nn.ConvTranspose2d(dim, channels, 2, stride=2)
        self.s16 = nn.Conv2d(dim, channels, 1)
        self.s32 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(dim, channels, 1))
        self.channels = [channels] * 4

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.s4(features), self.s8(features), self.s16(features), self.s32(features)


class _PrecomputedFeatures(nn.Module):
    """Stands in for Mask2Former's backbone: returns the maps handed to it just before the call."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.channels = channels
        self.maps: tuple[Tensor, ...] | None = None

    def forward(self, pixel_values: Tensor) -> ModelOutput:
        maps, self.maps = self.maps, None
        if maps is None:
            raise RuntimeError("VISModel must set the pyramid maps before calling Mask2Former")
        return ModelOutput(feature_maps=maps)


@dataclass
class FrameOutput:
    """Per-frame predictions of a batch, plus the backbone's output (keep masks, state)."""

    class_logits: Tensor  # (B, Q, C + 1), last = no object
    mask_logits: Tensor  # (B, Q, H/4, W/4)
    query_embeddings: Tensor  # (B, Q, hidden)
    backbone: BackboneOutput
    task_loss: Tensor | None


class VISModel(nn.Module):
    """PrunableViT + pyramid + Mask2Former; one call = one frame of each stream in the batch.

    The pyramid is a ``SimplePyramid`` for a plain backbone, None for one with an adapter (whose
    output already is a pyramid).
    """

    def __init__(self, backbone: PrunableViT, num_classes: int, head: HeadConfig = HeadConfig()):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.pyramid = SimplePyramid(backbone.embed_dim, head.hidden_dim) if backbone.adapter is None else None
        channels = self.pyramid.channels if self.pyramid is not None else [backbone.embed_dim] * 4
        config = Mask2FormerConfig(
            backbone_config=SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                       out_features=["stage1", "stage2", "stage3", "stage4"]),
            hidden_dim=head.hidden_dim, feature_size=head.hidden_dim, mask_feature_size=head.hidden_dim,
            encoder_layers=head.pixel_decoder_layers, decoder_layers=head.decoder_layers,
            num_attention_heads=head.heads, dim_feedforward=head.feedforward_dim,
            encoder_feedforward_dim=head.feedforward_dim, num_queries=head.num_queries,
            num_labels=num_classes, train_num_points=head.train_points, class_weight=head.class_weight,
            mask_weight=head.mask_weight, dice_weight=head.dice_weight, no_object_weight=head.no_object_weight,
        )
        self.head = Mask2FormerForUniversalSegmentation(config)
        pixel_module = self.head.model.pixel_level_module
        pixel_module.encoder = _PrecomputedFeatures(channels)
        pixel_module.decoder = Mask2FormerPixelDecoder(config, feature_channels=channels)
        # a module built after the model was constructed misses transformers' weight init:
        # without this its parameters are uninitialised memory (level_embed ~1e38, NaN offsets)
        for module in pixel_module.decoder.modules():
            self.head._init_weights(module)

    def forward(
        self,
        images: Tensor,
        state: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        targets: list[tuple[Tensor, Tensor]] | None = None,
        foreground: Tensor | None = None,
    ) -> FrameOutput:
        """Predict one frame per stream. ``targets``: per sample (masks (n, H, W) float, labels (n,));
        ``foreground``: ``(B, N)`` ground-truth foreground patches for methods that need them."""
        backbone_out = self.backbone(images, state=state, generator=generator, foreground=foreground)
        return self.decode(images, backbone_out, targets)

    def decode(self, images: Tensor, backbone_out: BackboneOutput,
               targets: list[tuple[Tensor, Tensor]] | None = None) -> FrameOutput:
        """Run the pyramid (the adapter's, if any) and Mask2Former on a backbone output, in fp32.

        A lower ``precision`` (autocast around the model) covers the backbone only, where the arithmetic
        is: the head's many small operations, its loss and its matching ran slower under CPU autocast
        than in fp32 (docs/performance.md), and the loss is where low precision is least wanted.
        """
        with torch.autocast(images.device.type, enabled=False):
            if self.pyramid is None:
                maps = tuple(level.float() for level in backbone_out.pyramid)
            else:
                maps = self.pyramid(backbone_out.features.float())
            return self._head(images, backbone_out, maps, targets)

    def _head(self, images: Tensor, backbone_out: BackboneOutput, maps: tuple[Tensor, ...],
              targets: list[tuple[Tensor, Tensor]] | None) -> FrameOutput:
        """Mask2Former on the pyramid ``maps``."""
        self.head.model.pixel_level_module.encoder.maps = maps
        kwargs = {}
        if targets is not None:
            kwargs = {"mask_labels": [m for m, _ in targets], "class_labels": [c for _, c in targets]}
        out = self.head(pixel_values=images, **kwargs)
        # the tracker's embeddings: the last decoder layer's output after the decoder's LayerNorm, as MinVIS and the
        # class head read it (transformers' field holds that layer's output before the norm)
        decoder_norm = self.head.model.transformer_module.decoder.layernorm
        return FrameOutput(
            class_logits=out.class_queries_logits,
            mask_logits=out.masks_queries_logits,
            query_embeddings=decoder_norm(out.transformer_decoder_last_hidden_state),
            backbone=backbone_out,
            task_loss=out.loss,
        )
