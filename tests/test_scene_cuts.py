"""The scene-cut study: frame IoI, its alignment on a known cut, the synthetic videos' recorded cuts, the paper's
lead-in of white frames in the evaluation."""

import json

import numpy as np
import pytest
import torch

from platform_helpers import write_config
from prunebench.config import load_config
from prunebench.data.synth import SynthSpec, generate
from prunebench.data.ytvis import YTVISDataset
from prunebench.errors import ConfigError
from prunebench.evaluation.scene_cuts import RecoveryMeter, frame_ioi
from prunebench.evaluation.vis_eval import evaluate
from prunebench.training.protocol import prepare_stage


def test_frame_ioi_is_the_mean_recall_over_blocks_and_visible_instances():
    patches = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)  # the third is not visible
    keep = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)  # two blocks
    assert frame_ioi(patches, keep) == pytest.approx(100 * ((1 + 0.5) / 2 + (1 + 0) / 2) / 2)
    assert frame_ioi(patches[2:], keep) is None


def test_frames_align_on_a_known_cut():
    meter = RecoveryMeter()
    series = [50.0, 52.0, 54.0, 90.0, 20.0, 70.0, 80.0, None, 85.0, 86.0]  # cut at frame 4: 20 % right after it
    for t, value in enumerate(series):
        meter.add_video_frame([4], t, value)
    cut, start = meter.result()["cut"], meter.result()["start"]
    assert cut == {"m1": 90.0, "0": 20.0, "1": 70.0, "2": 80.0, "3": None, "4": 85.0}
    assert start == {"0": 50.0, "1": 52.0, "2": 54.0, "3": 90.0, "4": 20.0}
    assert "blank" not in meter.result()
    with pytest.raises(ValueError, match="alignment must be one of"):
        meter.add("cuts", 0, 1.0)


def test_synthetic_videos_record_their_cut_where_the_background_changes(tmp_path):
    generate(tmp_path, SynthSpec(videos=3, valid_videos=1, frames=8, height=64, width=96, seed=3, scene_cut_prob=1.0))
    videos = YTVISDataset(tmp_path, "train").videos
    for video in videos:
        assert len(video.scene_cuts) == 1 and 2 <= video.scene_cuts[0] < 8
        frames = np.stack([video.load_frame(t).astype(float) for t in range(len(video))])
        change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # change[t - 1]: frame t against t - 1
        assert int(np.argmax(change)) + 1 == video.scene_cuts[0]
    generate(tmp_path / "none", SynthSpec(videos=2, valid_videos=1, frames=8, height=64, width=96, scene_cut_prob=0.0))
    assert all(v.scene_cuts == () for v in YTVISDataset(tmp_path / "none", "train").videos)


def test_reader_refuses_a_cut_outside_the_video(tmp_path):
    generate(tmp_path, SynthSpec(videos=2, valid_videos=1, frames=4, height=64, width=96))
    path = tmp_path / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    data["videos"][0]["scene_cuts"] = [4]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"video 1: scene_cuts \[4\]; allowed: a list of frame indices 1 \.\. 3"):
        YTVISDataset(tmp_path, "train")


@pytest.mark.parametrize("method,params", [("dense", {}), ("vpp", {}), ("oracle", {"rho": 0.7})])
def test_evaluation_reports_recovery_after_cuts_the_start_and_white_frames(tmp_path, method, params):
    config = load_config(write_config(tmp_path, data={"synth": {"videos": 2, "valid_videos": 2, "frames": 8, "height": 64,
                                                                "width": 96, "seed": 0, "scene_cut_prob": 1.0}},
                                      method={"name": method, "params": params}))
    prepared = prepare_stage(config, "finetune")
    recovery = evaluate(prepared.model, prepared.valid, config.eval, timing=False).metrics["recovery"]
    assert set(recovery) == {"cut", "start", "blank"}
    assert list(recovery["cut"]) == ["m1", "0", "1", "2", "3", "4"] and list(recovery["blank"]) == ["0", "1", "2", "3", "4"]
    values = [v for series in recovery.values() for v in series.values() if v is not None]
    assert values and all(0 <= v <= 100 for v in values)
    if method == "dense":
        assert all(v == 100.0 for v in values)  # every patch enters every block
    without = evaluate(prepared.model, prepared.valid, config.eval.model_copy(update={"lead_in_frames": 0}),
                       timing=False).metrics
    assert "blank" not in without["recovery"] and without["recovery"]["start"] == recovery["start"]
