"""Where Tune keeps a sweep, and whether there is one to resume: checked before anything starts."""

from __future__ import annotations

from pathlib import Path

from ray import tune

from prunebench.errors import ConfigError


def ray_storage(out: str, storage_path: str | None = None) -> str:
    """Where Ray keeps a command's trials and checkpoints: ``storage_path`` (a folder or URI), or
    ``<out>/ray_results``."""
    return storage_path or str((Path(out) / "ray_results").resolve())


def experiment_path(storage: str, name: str) -> str:
    """Where Tune keeps a sweep (local folder or URI)."""
    return f"{storage.rstrip('/')}/{name}"


def check_resumable(storage: str, name: str) -> None:
    """ConfigError unless a sweep ``name`` exists under ``storage`` to be resumed."""
    if not tune.Tuner.can_restore(experiment_path(storage, name)):
        raise ConfigError(f"--resume: nothing named '{name}' to resume under {storage}")
