"""Numeric precision of training and inference: the config's top-level ``precision`` (and ``dense_precision``,
the dense stage's when it differs).

``fp32`` runs as PyTorch does by default: nothing is wrapped, so results are those of a config
without the setting. ``bf16`` and ``fp16`` run the model's forward under ``torch.autocast`` with that
dtype: the backbone's matrix products in the lower precision, while the head (pyramid, Mask2Former,
its loss and matching) opts out and runs in fp32 (``VISModel.decode``), and the weights, the optimizer
state and the gradients stay fp32. ``fp16`` on a GPU scales the loss with a
``torch.amp.GradScaler``. What leaves the model for scoring (tracking, AP, PKR, IoI) is read in fp32.

Where each runs, checked on the driver before anything starts (``check_precision``): ``bf16`` on a CPU
needs bfloat16 instructions (``cpu_supports_bf16``); ``fp16`` is GPU-only (CPU autocast to float16 has
fast kernels only on a few recent server CPUs, and no loss scaling is done there); ``bf16`` on a GPU
needs one that has it natively (compute capability 8.0 or newer), checked when this machine has the GPU.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from prunebench.errors import ConfigError

#: the values of the setting
Precision = Literal["fp32", "bf16", "fp16"]
#: the autocast dtype of each lower precision
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: CPU features (as ``torch.cpu.get_capabilities`` names them) with native bfloat16 arithmetic:
#: x86 AVX512_BF16, AMX_BF16 and AVX_NE_CONVERT; ARM BF16 and SVE_BF16
BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16", "avx_ne_convert", "bf16", "sve_bf16")


def autocast(precision: Precision, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The context to run a forward in: nothing for ``fp32``, else ``torch.autocast`` on ``device``'s type."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(precision: Precision, device: str | torch.device) -> torch.amp.GradScaler:
    """A loss scaler, enabled for ``fp16`` on a GPU only (disabled, its calls pass the loss and step through)."""
    device_type = torch.device(device).type
    return torch.amp.GradScaler(device_type, enabled=precision == "fp16" and device_type == "cuda")


def cpu_supports_bf16() -> bool:
    """Whether this machine's CPU has native bfloat16 arithmetic (one of ``BF16_CPU_FEATURES``)."""
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(feature) is True for feature in BF16_CPU_FEATURES)


def check_precision(precision: Precision, device: str, key: str = "precision") -> None:
    """Before anything starts: a ``ConfigError`` (one line) unless ``precision`` (the config's ``key``) runs on
    ``device`` here.

    A GPU that this machine does not have (a cluster's) is not checked: its workers meet it at autocast.
    """
    if precision == "fp16" and device == "cpu":
        raise ConfigError(f"{key}=fp16 with device=cpu: fp16 autocast runs on a GPU only; "
                          f"allowed: --set {key}=bf16 or {key}=fp32, or --set device=cuda")
    if precision == "bf16" and device == "cpu" and not cpu_supports_bf16():
        raise ConfigError(f"{key}=bf16 but this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16, "
                          "avx_ne_convert or ARM bf16 in torch.cpu.get_capabilities()); "
                          f"allowed: --set {key}=fp32, or --set device=cuda")
    if precision == "bf16" and device == "cuda" and torch.cuda.is_available() \
            and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(f"{key}=bf16 but this machine's GPU ({torch.cuda.get_device_name()}) has no native "
                          f"bfloat16; allowed: --set {key}=fp16 or {key}=fp32")
