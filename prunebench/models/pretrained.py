"""Reading a user's pretrained ViT weights (no timm: the commands' checks read them before any model is built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from prunebench.errors import ConfigError

_ALLOWED = "an existing timm ViT state dict, as .safetensors or a torch file read with weights_only"


def read_timm_state(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a local timm ViT checkpoint: safetensors, or a torch file read with
    ``weights_only=True`` (no pickled code); a ``{"model": state}`` wrapper is unwrapped.

    ConfigError naming ``path`` when it does not exist or does not read as a state dict.
    """
    try:
        state: Any = load_file(path) if str(path).endswith(".safetensors") else torch.load(path, map_location="cpu",
                                                                                         weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{path}: pretrained weights not found; allowed: {_ALLOWED}") from None
    except Exception as error:  # torch/safetensors raise several types on a bad file
        raise ConfigError(f"{path}: cannot read pretrained weights ({error}); allowed: {_ALLOWED}") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{path}: cannot read pretrained weights (not a mapping of names to tensors); "
                          f"allowed: {_ALLOWED}")
    return state
