"""The dense model, trained once and cached under a content key.

The key is a hash of everything that determines the dense model: the config's dense part (seed,
device, the dense stage's precision, model, the ``train`` stage, the data settings except where the folder is), the
train and valid split hashes, the code version, and the pretrained weights' file hash. A later ``benchmark``,
``tune`` or ``demo`` with the same key reuses the cached checkpoint; any change of data, config or
code trains it again. The cache lives in ``$PRUNEBENCH_CACHE`` (default ``~/.cache/prunebench``)
under ``dense/<key>/dense.safetensors``; every run also keeps its own copy in its output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prunebench.atomic import atomic_path
from prunebench.config import ExperimentConfig
from prunebench.data.ytvis import YTVISDataset
from prunebench.training.checkpoint import code_version
from prunebench.validation import to_dict

CACHE_ENV = "PRUNEBENCH_CACHE"


def cache_root() -> Path:
    """``$PRUNEBENCH_CACHE``, else ``~/.cache/prunebench``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "prunebench")


def _file_hash(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dense_key(config: ExperimentConfig, train: YTVISDataset, valid: YTVISDataset) -> str:
    """The content key of the dense model ``config`` trains on these splits."""
    tree = to_dict(config)
    data = {k: v for k, v in tree["data"].items() if k != "root"}
    part = {"seed": tree["seed"], "device": tree["device"], "precision": config.stage_precision("train"), "model": tree["model"],
            "train": tree["train"], "data": data, "train_sha256": train.sha256, "valid_sha256": valid.sha256,
            "code": code_version(),
            "pretrained_sha256": _file_hash(config.model.pretrained) if config.model.pretrained else None}
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class DenseModel:
    """Where the dense checkpoint of a run is, and whether it came from the cache."""

    checkpoint: Path
    key: str
    reused: bool


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def dense_model(config: ExperimentConfig, train: YTVISDataset, valid: YTVISDataset, target: Path,
                train_into: Callable[[Path], None]) -> DenseModel:
    """The dense checkpoint at ``target``: copied from the cache, or trained by ``train_into(target)`` and cached."""
    key = dense_key(config, train, valid)
    cached = cache_root() / "dense" / key / "dense.safetensors"
    if cached.is_file():
        _copy(cached, target)
        return DenseModel(target, key, reused=True)
    train_into(target)
    _copy(target, cached)
    return DenseModel(target, key, reused=False)
