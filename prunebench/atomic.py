"""Atomic file output: write to a temporary file beside the target, then rename over it.

Temporary files and folders are created with mode 0o666 / 0o777 and the kernel takes the user's
umask off (0644 / 0755 under umask 022), as ``open`` and ``mkdir`` do: ``tempfile.mkstemp`` and
``mkdtemp`` would leave every renamed output 0600 / 0700 whatever the umask. A writer that replaces
the temporary file with one of its own (safetensors writes 0600) gets the temporary file's mode back
before the rename: the umask is never read (reading it means setting it, which races other threads).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prunebench.errors import ConfigError

#: names tried before giving up on a free temporary name (each has 64 random bits)
_NAME_ATTEMPTS = 100


def _create_beside(folder: Path, prefix: str, create: Callable[[Path], None]) -> Path:
    """A new path ``folder/<prefix><random>`` made by ``create`` (which fails if the path exists)."""
    for _ in range(_NAME_ATTEMPTS):
        path = folder / f"{prefix}{secrets.token_hex(8)}"
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name {prefix}* in {folder}")


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def new_file(folder: str | Path, prefix: str) -> Path:
    """A new empty file in ``folder`` named ``<prefix><random>``, with the user's umask permissions."""
    return _create_beside(Path(folder), prefix, _create_file)


def new_folder(folder: str | Path, prefix: str) -> Path:
    """A new empty folder in ``folder`` named ``<prefix><random>``, with the user's umask permissions."""
    return _create_beside(Path(folder), prefix, lambda path: path.mkdir(0o777))


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``Path.exists`` is False below a file, too)."""
    absolute = Path(os.path.abspath(path))
    return next((p for p in (absolute, *absolute.parents) if p.exists()), absolute)


def check_folder_target(path: str | Path, flag: str = "") -> None:
    """ConfigError (one line naming ``flag`` and ``path``) if ``path`` cannot become a folder: it, or a
    folder it would be created in, is a file, or the nearest existing folder is not writable."""
    existing = _first_existing(Path(path))
    named = f"{flag} {path}" if flag else str(path)
    if existing.is_dir():
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{named}: folder {existing} is not writable; allowed: a folder you can write in")
        return
    if existing == Path(os.path.abspath(path)):
        raise ConfigError(f"{named}: is a file, not a folder; allowed: a new or empty folder")
    raise ConfigError(f"{named}: {existing} is a file, not a folder; allowed: a path under folders only")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it to ``path``, else delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_file(target.parent, f".{target.name}.")
    mode = stat.S_IMODE(tmp.stat().st_mode)  # the umask's: restored if a writer replaced the file (safetensors)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_folder(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a new folder beside ``path``; on success rename it to ``path`` (after deleting a folder there when
    ``replace``; else only a missing or empty ``path`` is replaced), otherwise delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = new_folder(target.parent, f".{target.name}.")
    try:
        yield staging
        if replace and target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return Path(path)
