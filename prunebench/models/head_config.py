"""The Mask2Former head's size: the ``model.head`` config section (no torch, no transformers: the config loads fast)."""

from __future__ import annotations

from pydantic import Field

from prunebench.validation import ConfigModel


class HeadConfig(ConfigModel):
    """Size of the Mask2Former head (defaults: a small head for CPU runs); a config section (``model.head``)."""

    num_queries: int = Field(10, ge=1)
    hidden_dim: int = Field(64, ge=1)
    decoder_layers: int = Field(3, ge=1)
    pixel_decoder_layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    feedforward_dim: int = Field(256, ge=1)
    train_points: int = Field(1024, ge=1)
    class_weight: float = Field(2.0, ge=0)
    mask_weight: float = Field(5.0, ge=0)
    dice_weight: float = Field(5.0, ge=0)
    no_object_weight: float = Field(0.1, ge=0)
