"""``prunebench data split``: a held-out validation split of train, reading train's frames, and the overlap guard."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from prunebench.config import load_config
from prunebench.data.split import SplitSpec, split_dataset
from prunebench.data.synth import SynthSpec, generate
from prunebench.data.ytvis import YTVISDataset
from prunebench.errors import ConfigError
from prunebench.platform.cli import main
from prunebench.training.protocol import load_datasets

SPEC = SynthSpec(videos=6, valid_videos=1, frames=2, height=32, width=32, seed=5)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A small synthetic YouTube-VIS folder (6 train videos); each test splits a copy of it."""
    root = tmp_path_factory.mktemp("split-source") / "data"
    generate(root, SPEC, workers=1)
    return root


@pytest.fixture
def root(source, tmp_path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "data"))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _split(root: Path, *args: str) -> dict:
    return split_dataset(root, SplitSpec(**dict(zip(args[::2], args[1::2]))))


def test_split_records_ids_and_hashes_and_copies_no_frames(root, capsys):
    before = _snapshot(root)
    assert main(["data", "split", str(root), "--valid-videos", "2", "--seed", "1", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    added = set(_snapshot(root)) - set(before)
    assert added == {"annotations/instances_valid-holdout-train.json", "annotations/instances_valid-holdout.json",
                     "splits/valid-holdout.json"}
    assert all(_snapshot(root)[name] == data for name, data in before.items())  # nothing else touched
    record = json.loads((root / "splits" / "valid-holdout.json").read_text())
    assert record["seed"] == 1 and record["from_split"] == "train" and record["frames_split"] == "train"
    held, kept = record["splits"]["valid-holdout"], record["splits"]["valid-holdout-train"]
    assert len(held["video_ids"]) == 2 and sorted(held["video_ids"] + kept["video_ids"]) == list(range(1, 7))
    for name, info in record["splits"].items():
        assert hashlib.sha256((root / info["file"]).read_bytes()).hexdigest() == info["sha256"]
        assert answer["splits"][name]["sha256"] == info["sha256"]
    assert (answer["train_split"], answer["valid_split"], answer["train_videos"], answer["valid_videos"]) == \
        ("valid-holdout-train", "valid-holdout", 4, 2)


def test_both_new_splits_load_on_train_frames(root):
    _split(root, "valid_fraction", 0.34, "seed", 0)
    train, valid = YTVISDataset(root, "valid-holdout-train"), YTVISDataset(root, "valid-holdout")
    assert train.frames_dir == valid.frames_dir == root / "train" / "JPEGImages"
    assert len(train.videos) == 4 and len(valid.videos) == 2
    full = {v.id: v for v in YTVISDataset(root, "train").videos}
    for video in valid.videos:
        assert video.frame_paths == full[video.id].frame_paths and video.instances == full[video.id].instances
        assert video.load_frame(0).shape == (32, 32, 3)
    config = load_config({"data": {"root": str(root), "train_split": "valid-holdout-train", "valid_split": "valid-holdout"}})
    assert [len(s.videos) for s in load_datasets(config)] == [4, 2]


def test_same_seed_same_files_other_seeds_other_videos(root):
    first, again = _split(root, "valid_videos", 2, "seed", 7, "name", "a"), _split(root, "valid_videos", 2, "seed", 7, "name", "b")
    assert first["splits"]["a"]["sha256"] == again["splits"]["b"]["sha256"]
    assert (root / "annotations/instances_a.json").read_bytes() == (root / "annotations/instances_b.json").read_bytes()
    held = set()
    for seed in range(4):
        _split(root, "valid_videos", 2, "seed", seed, "name", f"s{seed}")
        held.add(tuple(json.loads((root / f"splits/s{seed}.json").read_text())["splits"][f"s{seed}"]["video_ids"]))
    assert len(held) > 1


def test_evaluation_refuses_a_valid_split_that_overlaps_train(root):
    _split(root, "valid_videos", 2, "seed", 3)
    held = json.loads((root / "splits/valid-holdout.json").read_text())["splits"]["valid-holdout"]["video_ids"]
    config = load_config({"data": {"root": str(root), "train_split": "train", "valid_split": "valid-holdout"}})
    with pytest.raises(ConfigError, match=f"videos {held[0]}, {held[1]} are on both sides") as error:
        load_datasets(config)
    assert "\n" not in str(error.value)
    # the same frame files under other ids overlap too
    renamed = json.loads((root / "annotations/instances_valid-holdout.json").read_text())
    for video in renamed["videos"]:
        video["id"] += 100
    for annotation in renamed["annotations"]:
        annotation["video_id"] += 100
    (root / "annotations/instances_renamed.json").write_text(json.dumps(renamed))
    config = load_config({"data": {"root": str(root), "train_split": "train", "valid_split": "renamed"}})
    with pytest.raises(ConfigError, match=f"videos {held[0]}, {held[1]}, {held[0] + 100}, {held[1] + 100} are"):
        load_datasets(config)


def _repeat_videos(root: Path) -> None:
    """Give train a second record of every video's frames under id + 100 (a source whose halves would overlap)."""
    path = root / "annotations/instances_train.json"
    data = json.loads(path.read_text())
    data["videos"] += [{**video, "id": video["id"] + 100} for video in data["videos"]]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("args, message", [
    (["--valid-videos", "0"], "allowed: 1..5 held-out videos"),
    (["--valid-videos", "6"], "allowed: 1..5 held-out videos"),
    (["--valid-videos", "60"], "split 'train' has 6 videos"),
    (["--valid-fraction", "0"], "allowed: a fraction in (0, 1)"),
    (["--valid-fraction", "1.0"], "allowed: a fraction in (0, 1)"),
    (["--valid-fraction", "0.01"], "(0 videos)"),
    (["--valid-videos", "2", "--from-split", "test"], "allowed: train, valid"),
    (["--valid-videos", "2", "--name", "train"], "would replace the split it is drawn from"),
    (["--valid-videos", "2", "--name", "../x"], "--name '../x'"),
    (["--valid-videos", "2", "--name", "valid"], "instances_valid.json exists; allowed: a new name, or --overwrite"),
    (["--valid-videos", "6", "repeat"], "lists the same frame files under videos"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(root, capsys, args, message):
    if args[-1] == "repeat":
        args = args[:-1]
        _repeat_videos(root)
    before = _snapshot(root)
    assert main(["data", "split", str(root), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert _snapshot(root) == before and not (root / "splits").exists()


def test_unknown_root_and_missing_size_exit_2(tmp_path, capsys):
    assert main(["data", "split", str(tmp_path / "nowhere"), "--valid-videos", "1"]) == 2
    assert "not a YouTube-VIS folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "split", str(tmp_path)])
    assert exit_info.value.code == 2 and "--valid-videos" in capsys.readouterr().err


def test_overwrite_replaces_an_existing_split(root):
    _split(root, "valid_videos", 1, "seed", 0)
    with pytest.raises(ConfigError, match="exists"):
        _split(root, "valid_videos", 3, "seed", 0)
    assert _split(root, "valid_videos", 3, "seed", 0, "overwrite", True)["valid_videos"] == 3
    assert len(YTVISDataset(root, "valid-holdout").videos) == 3
