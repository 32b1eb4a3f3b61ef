"""Synthetic generator determinism and the reader's malformed-input errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from prunebench.data.synth import SynthSpec, generate
from prunebench.data.ytvis import YTVISDataset
from prunebench.errors import ConfigError
from prunebench.platform.cli import main

SPEC = SynthSpec(videos=6, valid_videos=2, frames=8, height=64, width=96, seed=3, scene_cut_prob=0.5)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    return root, generate(root, SPEC, workers=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(synth, tmp_path):
    root, info = synth  # drawn by 2 worker processes
    again = generate(tmp_path / "again", SPEC, workers=1)
    assert _files(root) == _files(tmp_path / "again")
    assert again["splits"] == info["splits"]
    other = generate(tmp_path / "other", SynthSpec(**{**SPEC.__dict__, "seed": 4}))
    assert other["splits"]["train"]["sha256"] != info["splits"]["train"]["sha256"]


def test_output_passes_the_reader_and_is_not_trivial(synth):
    root, info = synth
    recorded = json.loads((root / "splits.json").read_text())["splits"]
    assert recorded == info["splits"]
    train = YTVISDataset(root, "train")
    assert len(train.videos) == 6 and len(train.categories) >= 5
    instances = [inst for v in train.videos for inst in v.instances]
    assert 1 <= min(len(v.instances) for v in train.videos) and max(len(v.instances) for v in train.videos) <= 4
    assert len({inst.category_id for inst in instances}) >= 3
    assert any(inst.rles[0] is None and any(inst.rles) for inst in instances)  # enters mid-video (or hidden)
    video = train.videos[0]
    masks, labels = video.masks(2)
    assert masks.shape[1:] == (64, 96) and len(labels) == masks.shape[0]
    assert video.load_frame(0).shape == (64, 96, 3)
    assert YTVISDataset(root, "valid").ground_truth()["annotations"]


def test_synth_cli_json_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "synth", str(out), "--videos", "1", "--valid-videos", "1", "--frames", "3",
                 "--height", "32", "--width", "48", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"videos", "frames", "instances"} <= set(result) and result["videos"] == 2 and result["frames"] == 6
    before = _files(out)
    assert main(["data", "synth", str(out), "--videos", "2"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert _files(out) == before
    assert main(["data", "synth", str(tmp_path / "w"), "--workers", "0"]) == 2
    assert "--workers 0" in capsys.readouterr().err and not (tmp_path / "w").exists()


def _broken_copy(root: Path, tmp_path: Path, edit) -> Path:
    target = tmp_path / "broken"
    shutil.copytree(root, target)
    path = target / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    edit(data, target)
    path.write_text(json.dumps(data))
    return target


def _train_fails(capsys, tmp_path, root, *fragments):
    out = tmp_path / "out"
    code = main(["train", "demo", "--set", f"data.root={root}", "--set", f"out={out}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()  # nothing written: the data is checked before anything starts


def test_unreadable_json(synth, tmp_path, capsys):
    root = _broken_copy(synth[0], tmp_path, lambda d, r: None)
    (root / "annotations" / "instances_train.json").write_text("{not json")
    _train_fails(capsys, tmp_path, root, "instances_train.json", "not readable JSON")


def test_missing_frame_file(synth, tmp_path, capsys):
    def edit(data, r):
        (r / "train" / "JPEGImages" / data["videos"][1]["file_names"][3]).unlink()
    root = _broken_copy(synth[0], tmp_path, edit)
    _train_fails(capsys, tmp_path, root, "video 2 frame 3", "is missing")


def test_segmentation_list_of_wrong_length(synth, tmp_path, capsys):
    root = _broken_copy(synth[0], tmp_path, lambda d, r: d["annotations"][0]["segmentations"].pop())
    _train_fails(capsys, tmp_path, root, "annotation 1", "7 segmentations for a video of 8 frames")


def test_undecodable_rle(synth, tmp_path, capsys):
    def edit(data, r):
        segs = data["annotations"][1]["segmentations"]
        t = next(i for i, s in enumerate(segs) if s is not None)
        segs[t]["counts"] = "\x7f\x7f!!garbage"
    root = _broken_copy(synth[0], tmp_path, edit)
    _train_fails(capsys, tmp_path, root, "annotation 2", "undecodable")


def test_unknown_category_id(synth, tmp_path, capsys):
    root = _broken_copy(synth[0], tmp_path, lambda d, r: d["annotations"][0].update(category_id=99))
    _train_fails(capsys, tmp_path, root, "annotation 1", "unknown category_id 99")


def test_polygon_and_uncompressed_rle_segmentations(synth, tmp_path):
    def edit(data, r):
        ann = data["annotations"][0]
        h, w = 64, 96
        m = np.zeros((h, w), dtype=np.uint8)
        m[10:20, 30:50] = 1
        flat = m.flatten(order="F")
        counts, last, run = [], 0, 0
        for v in flat:
            if v != last:
                counts.append(run)
                run, last = 0, v
            run += 1
        counts.append(run)
        ann["segmentations"] = [{"size": [h, w], "counts": counts}, [[30, 10, 50, 10, 50, 20, 30, 20]]] + [None] * 6
    root = _broken_copy(synth[0], tmp_path, edit)
    video = YTVISDataset(root, "train").videos[0]
    inst = video.instances[0]
    assert mask_utils.area({"size": [64, 96], "counts": inst.rles[0]["counts"].encode()}) == 200
    assert 150 <= mask_utils.area({"size": [64, 96], "counts": inst.rles[1]["counts"].encode()}) <= 260
    assert inst.rles[2] is None


def test_reader_reports_missing_annotation_file(tmp_path):
    with pytest.raises(ConfigError, match="annotation file not found"):
        YTVISDataset(tmp_path, "train")
