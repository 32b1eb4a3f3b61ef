"""prunebench: benchmark and tune token pruning for ViTs on video instance segmentation."""

from prunebench import _torchvision_guard  # noqa: F401  (must precede any timm import)

__version__ = "0.1.0"
