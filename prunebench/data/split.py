"""Hold out part of a YouTube-VIS split as a validation split (``prunebench data split ROOT``).

YouTube-VIS 2019/2021's public valid split has no ground truth, so a benchmark validates on videos
held out of ``train``. From ``ROOT/annotations/instances_<from>.json`` this writes

    ROOT/annotations/instances_<name>-train.json   the videos that stay (training)
    ROOT/annotations/instances_<name>.json         the held-out videos (validation)
    ROOT/splits/<name>.json                        video ids of each side, seed, sha256 of each file

Frames are not copied: both files are the source's own records (videos, annotations, categories,
info untouched, ``file_names`` unchanged) plus a top-level ``"frames_split": "<from>"``, which
``YTVISDataset`` reads to take the frames from ``ROOT/<from>/JPEGImages/``. The held-out videos are
a seeded sample of the source's video ids, so a seed always gives the same files. Every check runs
before anything is written; the three files are then written to temporary files and renamed.

``check_disjoint`` is the guard the protocol applies to a config's train and valid splits: splits
read from the same frame folder must not share a video, by id or by a frame file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunebench.atomic import atomic_path
from prunebench.data.ytvis import YTVISDataset
from prunebench.errors import ConfigError

#: a split name: letters, digits, '.', '_', '-', not starting with a dot or dash
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: overlapping video ids named in an error line at most
SHOWN_IDS = 10

VideoFiles = Iterable[tuple[int, Sequence[str]]]


@dataclass(frozen=True)
class SplitSpec:
    """What to hold out: ``valid_videos`` videos, or ``valid_fraction`` of them (exactly one is set)."""

    valid_videos: int | None = None
    valid_fraction: float | None = None
    seed: int = 0
    from_split: str = "train"
    name: str = "valid-holdout"
    overwrite: bool = False

    @property
    def train_name(self) -> str:
        """The split of the videos that stay: ``<name>-train``."""
        return f"{self.name}-train"

    def validate(self) -> None:
        """One-line errors for a bad name or size (before the data is read)."""
        if not NAME.fullmatch(self.name):
            raise ConfigError(f"--name {self.name!r}: allowed: letters, digits, '.', '_', '-' (not first)")
        if self.from_split in (self.name, self.train_name):
            raise ConfigError(f"--name {self.name}: would replace the split it is drawn from ('{self.from_split}'); "
                              "allowed: another name")
        if (self.valid_videos is None) == (self.valid_fraction is None):
            raise ConfigError("give exactly one of --valid-videos N and --valid-fraction F")
        if self.valid_fraction is not None and not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError(f"--valid-fraction {self.valid_fraction}: allowed: a fraction in (0, 1)")

    def held_out(self, total: int) -> int:
        """How many of ``total`` videos to hold out; at least one must stay on each side."""
        if self.valid_videos is not None:
            count, asked = self.valid_videos, f"--valid-videos {self.valid_videos}"
        else:
            count = round(self.valid_fraction * total)
            asked = f"--valid-fraction {self.valid_fraction} ({count} videos)"
        if not 1 <= count <= total - 1:
            raise ConfigError(f"{asked}: split '{self.from_split}' has {total} videos; "
                              f"allowed: 1..{total - 1} held-out videos (at least one left on each side)")
        return count


def overlapping_videos(first: VideoFiles, second: VideoFiles) -> list[int]:
    """Sorted ids of the videos of either side that share an id or a frame file name with the other side."""
    owners: dict[str, int] = {}
    first_ids = set()
    for vid, names in first:
        first_ids.add(vid)
        owners.update(dict.fromkeys(names, vid))
    shared: set[int] = set()
    for vid, names in second:
        partners = {owners[name] for name in names if name in owners}
        if vid in first_ids or partners:
            shared |= {vid, *partners}
    return sorted(shared)


def _id_list(ids: Sequence[int]) -> str:
    """``3, 7, 9`` (at most ``SHOWN_IDS``, then how many in all)."""
    shown = ", ".join(map(str, ids[:SHOWN_IDS]))
    return shown if len(ids) <= SHOWN_IDS else f"{shown}, ... ({len(ids)} in all)"


def _video_files(dataset: YTVISDataset) -> list[tuple[int, list[str]]]:
    return [(vid, meta["file_names"]) for vid, meta in dataset.annotations.videos.items()]


def check_disjoint(train: YTVISDataset, valid: YTVISDataset) -> None:
    """ConfigError naming the shared videos if two splits read from one frame folder share a video."""
    if train.frames_dir.resolve() != valid.frames_dir.resolve():
        return
    shared = overlapping_videos(_video_files(train), _video_files(valid))
    if shared:
        raise ConfigError(f"valid split '{valid.split}' overlaps train split '{train.split}' (frames of both in "
                          f"{train.frames_dir}): videos {_id_list(shared)} are on both sides (same id or frame file); "
                          "allowed: disjoint splits, e.g. from 'prunebench data split'")


def available_splits(root: Path) -> list[str]:
    """Names of the splits with an annotation file under ``root/annotations``."""
    return sorted(p.name[len("instances_"):-len(".json")] for p in (root / "annotations").glob("instances_*.json"))


def _read_source(root: Path, split: str) -> tuple[YTVISDataset, dict[str, Any]]:
    """The validated source split (frames checked) and its JSON as written."""
    if not (root / "annotations").is_dir():
        raise ConfigError(f"{root}: not a YouTube-VIS folder (no {root / 'annotations'})")
    if split not in available_splits(root):
        raise ConfigError(f"--from-split {split}: no {root / 'annotations' / f'instances_{split}.json'}; "
                          f"allowed: {', '.join(available_splits(root)) or 'none found'}")
    dataset = YTVISDataset(root, split)
    return dataset, json.loads(dataset.annotations.path.read_bytes())


def _outputs(root: Path, spec: SplitSpec) -> dict[str, Path]:
    """The files written, by role: ``train``, ``valid`` (annotation files) and ``record``."""
    annotations = root / "annotations"
    return {"train": annotations / f"instances_{spec.train_name}.json",
            "valid": annotations / f"instances_{spec.name}.json",
            "record": root / "splits" / f"{spec.name}.json"}


def _check_free(outputs: dict[str, Path], spec: SplitSpec) -> None:
    taken = [str(p) for p in outputs.values() if p.exists()]
    if taken and not spec.overwrite:
        raise ConfigError(f"--name {spec.name}: {taken[0]} exists; allowed: a new name, or --overwrite")


def _subset(source: dict[str, Any], ids: set[int], frames_split: str) -> bytes:
    """The source's JSON restricted to the videos ``ids`` (records unchanged), reading frames of ``frames_split``."""
    subset = {**source, "frames_split": frames_split,
              "videos": [v for v in source["videos"] if int(v["id"]) in ids],
              "annotations": [a for a in source["annotations"] if int(a["video_id"]) in ids]}
    return json.dumps(subset, sort_keys=True, separators=(",", ":")).encode()


def _write_all(files: dict[Path, bytes]) -> None:
    """Write every file to a temporary file beside it; rename them only once every write succeeded
    (in reverse order of ``files``)."""
    with contextlib.ExitStack() as stack:
        for path, data in files.items():
            stack.enter_context(atomic_path(path)).write_bytes(data)


def _hold_out(source: dict[str, Any], spec: SplitSpec) -> set[int]:
    """The seeded sample of video ids to hold out; ConfigError if it would leave a video on both sides."""
    files = [(int(v["id"]), v["file_names"]) for v in source["videos"]]
    ids = sorted({vid for vid, _ in files})
    held = set(random.Random(spec.seed).sample(ids, spec.held_out(len(ids))))
    shared = overlapping_videos([f for f in files if f[0] not in held], [f for f in files if f[0] in held])
    if shared:
        raise ConfigError(f"split '{spec.from_split}' lists the same frame files under videos {_id_list(shared)}: "
                          "they would be on both sides; allowed: a source without repeated videos")
    return held


def split_dataset(root: str | Path, spec: SplitSpec) -> dict[str, Any]:
    """Hold out videos of ``spec.from_split`` (see the module docstring); return what was written."""
    spec.validate()
    root = Path(root)
    dataset, source = _read_source(root, spec.from_split)
    outputs = _outputs(root, spec)
    _check_free(outputs, spec)
    held = _hold_out(source, spec)
    frames_split = dataset.annotations.frames_split or spec.from_split
    sides = {spec.train_name: (set(dataset.annotations.videos) - held, outputs["train"]),
             spec.name: (held, outputs["valid"])}
    texts = {name: _subset(source, ids, frames_split) for name, (ids, _) in sides.items()}
    splits = {name: {"file": str(path.relative_to(root)), "videos": len(ids), "video_ids": sorted(ids),
                     "sha256": hashlib.sha256(texts[name]).hexdigest()} for name, (ids, path) in sides.items()}
    record = {"name": spec.name, "from_split": spec.from_split, "frames_split": frames_split, "seed": spec.seed,
              "source_sha256": dataset.sha256, "splits": splits}
    _write_all({outputs["record"]: json.dumps(record, indent=1, sort_keys=True).encode(),  # renamed last
                outputs["valid"]: texts[spec.name], outputs["train"]: texts[spec.train_name]})
    return {"train_split": spec.train_name, "valid_split": spec.name, "seed": spec.seed, "record": str(outputs["record"]),
            "train_videos": len(sides[spec.train_name][0]), "valid_videos": len(held),
            "splits": {name: {"file": str(path), "videos": len(ids), "sha256": splits[name]["sha256"]}
                       for name, (ids, path) in sides.items()}}
