"""The network: prunable ViT backbone, the pruning interface, VPP."""

from prunebench.models.registry import BACKBONES, build_method, method_names
from prunebench.models.vit import BackboneOutput, PrunableViT, create_backbone

__all__ = ["BACKBONES", "BackboneOutput", "PrunableViT", "build_method", "create_backbone", "method_names"]
