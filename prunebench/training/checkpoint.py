"""Checkpoints: safetensors weights with the run's metadata, written atomically.

The metadata (a JSON string under the key ``prunebench``) holds the experiment config, the method,
the seed, the step, the code version and the category ids, so a checkpoint alone says what it is.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_model
from torch import Tensor, nn

import prunebench
from prunebench.atomic import atomic_path
from prunebench.errors import ConfigError


CODE_VERSION_ENV = "PRUNEBENCH_CODE_VERSION"
_COMMIT_IN_VERSION = re.compile(r"(?:^|[-+]g)([0-9a-f]{7,40})(?:[-.]dirty)?$")
_ALLOWED = "a prunebench checkpoint (the .safetensors file train or finetune writes)"


@functools.cache
def _git(*args: str) -> str | None:
    """Output of ``git ARGS`` in the package's checkout, asked once per process (the code it loaded);
    None without git or a checkout."""
    here = Path(prunebench.__file__).resolve().parent
    try:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def code_version() -> str:
    """``$PRUNEBENCH_CODE_VERSION`` when set (the submitter's checkout, e.g. ``git describe --always --dirty``:
    a job submitted without ``.git`` still knows its code), else the package version plus the git commit of
    the checkout, else the package version."""
    pinned = os.environ.get(CODE_VERSION_ENV)
    if pinned:
        return pinned
    commit = _git("rev-parse", "--short", "HEAD")
    if commit is None:
        return prunebench.__version__
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{prunebench.__version__}+g{commit}{'.dirty' if dirty else ''}"


def code_commit() -> str | None:
    """The git commit of the code version, when known: read from ``$PRUNEBENCH_CODE_VERSION`` (a
    ``git describe`` output or a ``code_version()``), else the checkout's full commit."""
    pinned = os.environ.get(CODE_VERSION_ENV)
    if pinned:
        found = _COMMIT_IN_VERSION.search(pinned)
        return found.group(1) if found else None
    return _git("rev-parse", "HEAD")


def check_backbone(path: str | Path, backbone: str) -> dict[str, Any]:
    """The metadata of a prunebench checkpoint trained with ``backbone``; ConfigError otherwise."""
    meta = read_meta(path)
    found = meta.get("config", {}).get("model", {}).get("backbone")
    if found != backbone:
        raise ConfigError(f"{path}: a checkpoint of backbone {found}; allowed: the config's backbone {backbone}")
    return meta


def method_params(meta: dict[str, Any], method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a checkpoint's method runs with: those it was trained with, and ``params`` on top when
    ``method`` is the checkpoint's method (e.g. ``stochastic_inference: false`` for evaluation)."""
    return {**meta.get("params", {}), **(params if method == meta.get("method") else {})}


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` (temp file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata={"prunebench": json.dumps({**meta, "code_version": code_version()})})
    return path


@dataclass
class Checkpoint:
    """A checkpoint read in one pass: its metadata and its tensors."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, Tensor]

    def load_into(self, model: nn.Module, allow_missing_prefix: str | None = None) -> None:
        """Load the weights into ``model``; only parameters under ``allow_missing_prefix`` may be absent.

        Fine-tuning loads a dense checkpoint into a model with a pruning method: the method's selectors
        are new (they keep their initialisation), everything else must match exactly.
        """
        missing, unexpected = model.load_state_dict(self.tensors, strict=False)
        missing = [k for k in missing if not (allow_missing_prefix and k.startswith(allow_missing_prefix))]
        if missing or unexpected:
            problem = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise ConfigError(f"{self.path}: weights do not fit this model ({problem}); "
                              "was it trained with another backbone or head?")


def _open(path: str | Path, tensors: bool) -> tuple[dict[str, Any], dict[str, Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = (handle.metadata() or {}).get("prunebench")
            weights = {k: handle.get_tensor(k) for k in handle.keys()} if tensors and meta is not None else {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: checkpoint not found; allowed: {_ALLOWED}") from None
    except Exception as error:  # safetensors raises its own error types on a corrupt header
        raise ConfigError(f"{path}: not a safetensors checkpoint ({error}); allowed: {_ALLOWED}") from None
    if meta is None:
        raise ConfigError(f"{path}: not a prunebench checkpoint (no 'prunebench' metadata); allowed: {_ALLOWED}")
    return json.loads(meta), weights


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint (its header only); ConfigError if it is not a prunebench checkpoint."""
    return _open(path, tensors=False)[0]


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Metadata and weights of a checkpoint, read once."""
    meta, tensors = _open(path, tensors=True)
    return Checkpoint(Path(path), meta, tensors)
