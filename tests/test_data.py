"""Synthetic generator determinism and the reader's malformed-input errors."""

import colorsys
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from prunebench.config import load_config
from prunebench.data import synth as synth_module
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


def test_annotation_of_unknown_category_is_dropped_with_one_warning(synth, tmp_path, caplog):
    root = _broken_copy(synth[0], tmp_path, lambda d, r: d["annotations"][0].update(category_id=99))
    train = YTVISDataset(root, "train")
    assert 1 not in [inst.id for video in train.videos for inst in video.instances]  # as ytvoseval: left out
    assert [r.getMessage() for r in caplog.records] == [
        f"{root / 'annotations' / 'instances_train.json'}: 1 annotations of category_id 99, missing from the "
        "category list; dropped, as ytvoseval does"]


def test_video_length_disagreeing_with_its_file_names(synth, tmp_path):
    root = _broken_copy(synth[0], tmp_path, lambda d, r: d["videos"][1].update(length=5))
    with pytest.raises(ConfigError, match=r"instances_train.json: video 2: length 5 disagrees with its 8 "
                                          r"file_names; allowed: length = the number of file_names$"):
        YTVISDataset(root, "train")


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


# --- harder data (SynthSpec's hardness options) -------------------------------------------------

#: sha256 of the JPEG frames (names and bytes), drawn by the code before the hardness options existed
#: (commit 3db80f8) with Pillow's JPEG encoder of this environment: the options at their defaults must not
#: change a pixel (the demo's trained AP depends on these frames); and the sha256 of each split (JPEG bytes +
#: annotation file) and of splits.json since the annotation files record each video's ``scene_cuts``
PINNED = {
    "test SPEC": ("61fae8a5166977697f4d7cabb68b959afcd1ecb06926d9920dabc2e623fc6092",
                  "5d4558667c226d7d66723ec5cbca6cab7b1d047a9f8c07feffb3d4b7b1829840",
                  "3991050a39bed17470167e5b8ad29866cb276e47ca24cff8a039071cbfdfd6e9",
                  "63d5b447f93a3d40d82403536860339737c0675574b7cd19c3eafdb56b2f9a60"),
    "defaults, 2 + 1 videos": ("119f785f68dd54d14abd529a7a20c06cf1c2d0a94a9919f5cf6d38c9c4db356b",
                               "06bfaaf9fe2d7f750586245c4d2ca1b22cef78ac79cadb39bb21705015c513fc",
                               "ec645afaeb0924b2658fcdd46a572fe65574e3b3c776c16d861767144064c8f3",
                               "b6f29f8084df0ee7c110a7884cf27f19af71b64055312c4d97877b8d0a2c995d"),
}
HARD = SynthSpec(videos=4, valid_videos=1, frames=6, height=128, width=224, seed=1, scene_cut_prob=0.5,
                 hue_mode="shared", radius_range=(0.06, 0.08), max_objects=2, camera_motion=2.0)


def _hashes(root: Path, info: dict) -> tuple[str, str, str, str]:
    frames = hashlib.sha256()
    for path in sorted(root.rglob("*.jpg")):
        frames.update(str(path.relative_to(root)).encode())
        frames.update(path.read_bytes())
    return (frames.hexdigest(), info["splits"]["train"]["sha256"], info["splits"]["valid"]["sha256"],
            hashlib.sha256((root / "splits.json").read_bytes()).hexdigest())


def test_default_options_give_the_pinned_files(synth, tmp_path):
    assert _hashes(*synth) == PINNED["test SPEC"]
    root = tmp_path / "defaults"
    assert _hashes(root, generate(root, SynthSpec(videos=2, valid_videos=1), workers=1)) == PINNED["defaults, 2 + 1 videos"]


def _hue(rgb: np.ndarray) -> float:
    return 360.0 * colorsys.rgb_to_hsv(*(rgb / 255.0))[0]


def test_shared_hues_cover_the_circle_for_every_category():
    rng = np.random.default_rng(0)
    for category, base in synth_module.CATEGORY_HUES.items():
        own = [_hue(synth_module._colors(rng, category, "category")[0]) for _ in range(100)]
        assert max(abs((h - base + 180) % 360 - 180) for h in own) <= 18.5
        shared = [_hue(synth_module._colors(rng, category, "shared")[0]) for _ in range(300)]
        assert len({int(h // 30) % 12 for h in shared}) == 12  # every 30° sector, whatever the category


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard") / "data"
    generate(root, HARD, workers=1)
    return root


def test_small_objects_are_annotated(hard):
    train = YTVISDataset(hard, "train")
    assert all(1 <= len(v.instances) <= HARD.max_objects for v in train.videos)
    annotations = json.loads((hard / "annotations" / "instances_train.json").read_text())["annotations"]
    means = [np.mean([a for a in ann["areas"] if a is not None]) for ann in annotations]
    assert all(synth_module.MIN_VISIBLE_PIXELS <= m < 512 for m in means)  # under 2 patches of 16x16


def test_camera_moves_a_still_object_with_the_scene(monkeypatch):
    spec = SynthSpec(frames=6, height=64, width=96, scene_cut_prob=0.0, camera_motion=2.0)
    still = synth_module._Object(category=1, radius=10.0, position=np.array([48.0, 32.0]), velocity=np.zeros(2),
                                 angle=0.0, spin=0.0, wobble=0.0, colors=(np.full(3, 220.0), np.zeros(3)),
                                 depth=0.0, start=0, stop=spec.frames)
    monkeypatch.setattr(synth_module, "_objects", lambda rng, spec, camera: [still])
    _, _, masks, _ = synth_module._render_video(np.random.default_rng(0), spec)
    camera = synth_module._camera_path(np.random.default_rng(0), spec)  # the video's first draws
    assert np.abs(camera).max() >= 2
    for t, mask in enumerate(masks[0]):
        ys, xs = np.nonzero(mask)
        np.testing.assert_allclose([xs.mean(), ys.mean()], still.position - camera[t], atol=1e-6)


@pytest.mark.parametrize("args, fragment", [
    (["--radius-range", "0.3", "0.1"], "--radius-range must be LOW HIGH with 0 < LOW <= HIGH <= 0.5, got (0.3, 0.1)"),
    (["--radius-range", "0", "0.2"], "--radius-range must be LOW HIGH with 0 < LOW <= HIGH <= 0.5, got (0.0, 0.2)"),
    (["--max-objects", "0"], "--max-objects must be an integer >= 1, got 0"),
    (["--camera-motion", "-1"], "--camera-motion must be a number in [0, 16], got -1.0"),
    (["--height", "16"], "--height must be an integer >= 32, got 16"),
    (["--hue-mode", "rainbow"], "'rainbow'"),
])
def test_bad_hardness_options_exit_with_one_line(tmp_path, capsys, args, fragment):
    try:
        code = main(["data", "synth", str(tmp_path / "d"), *args])
    except SystemExit as stop:  # argparse's own checks (--hue-mode choices)
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "d").exists()


def test_hardness_options_from_a_config():
    synth = {**HARD.__dict__, "radius_range": [0.06, 0.08]}  # YAML gives a list
    assert load_config("demo", {"data.synth": synth}).data.synth == HARD
    with pytest.raises(ConfigError, match=r"^--set data.synth={.*}: data.synth.radius_range must be a list of 2 numbers"):
        load_config("demo", {"data.synth": {**synth, "radius_range": [0.06, 0.08, 0.1]}})
    with pytest.raises(ConfigError, match="data.synth.hue_mode must be one of 'category', 'shared', got 'rainbow'"):
        load_config("demo", {"data.synth": {**synth, "hue_mode": "rainbow"}})
