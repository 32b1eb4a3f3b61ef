"""``prunebench benchmark`` end to end on the benchmark-tiny preset (real Ray, real MLflow, real data files).

One benchmark is run in a subprocess with its own Ray temp folder; the tests then check the JSON
contract, that every fine-tuned checkpoint is in the output folder and in MLflow after Ray's
folder is gone, that a second run reuses the cached dense model, and that a benchmark whose driver
is killed resumes with no trial or MLflow run lost or duplicated.
"""

import os
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from platform_helpers import cli, kill_driver_when
from prunebench.config import load_config
from prunebench.data.synth import SynthSpec, generate
from prunebench.data.ytvis import YTVISDataset
from prunebench.platform.benchmark_grid import benchmark_specs
from prunebench.platform.dense_cache import dense_key, dense_model

pytestmark = pytest.mark.slow
TRIALS = 16  # vpp, dynamicvit, random, oracle x 2 settings x 2 seeds


def _env(root: Path) -> dict[str, str]:
    """The dense cache under ``root``; Ray's temp folder short (socket paths) and of this test alone."""
    ray_tmp = Path(f"/tmp/rt{os.getpid()}-{abs(hash(str(root))) % 10**6}")
    ray_tmp.mkdir(exist_ok=True)
    return {"PRUNEBENCH_CACHE": str(root / "cache"), "RAY_TMPDIR": str(ray_tmp)}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    result = cli(["benchmark", "benchmark-tiny", "--out", root / "out", "--json"], env=_env(root))
    return root, result


def _eval_runs(uri, experiment="benchmark-tiny"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], filter_string="tags.`prunebench.kind` = 'eval'")


def test_json_contract_and_leaderboard_rows(first):
    _, result = first
    assert set(result) >= {"leaderboard", "report", "mlflow_experiment_id", "wall_seconds"}
    rows = result["leaderboard"]
    assert {(r["method"], r["goal_pkr"]) for r in rows} == {(m, g) for m in ("vpp", "dynamicvit", "random", "oracle")
                                                           for g in (0.55, 0.40)}
    keys = {"method", "goal_pkr", "ap_at_goal", "ap_ci", "delta_ap_dense", "delta_ap_random", "significant_vs_vpp",
            "converged", "seeds", "pkr"}
    assert all(keys <= set(r) for r in rows)
    assert all(r["seeds"] == 2 for r in rows)
    # random and oracle keep exact top-k counts: their PKRs bracket both goals, so they have an AP@goal
    assert all(r["ap_at_goal"] is not None and r["pkr"][0] < r["goal_pkr"] < r["pkr"][1]
               for r in rows if r["method"] in ("random", "oracle"))
    assert Path(result["report"]).is_file() and result["dense_reused"] is False


def test_every_trial_logged_once_with_its_checkpoint_after_rays_folder_is_gone(first):
    root, result = first
    ray_tmp = Path(_env(root)["RAY_TMPDIR"])
    assert any(ray_tmp.glob("ray/session_*")) or any(ray_tmp.glob("session_*"))  # Ray really kept its session there
    shutil.rmtree(ray_tmp)  # Ray's session folder: nothing may live only there
    client, runs = _eval_runs(result["mlflow_tracking_uri"])
    trials = [r for r in runs if r.data.tags["method"] != "dense"]
    assert len(trials) == TRIALS and len({r.data.tags["trial_id"] for r in trials}) == TRIALS
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in trials[:3]:
        assert {"AP", "pkr", "converged", "fps_model", "per_video_AP_1"} <= set(run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "train_task_loss")
        assert [m.step for m in history] == [1, 2, 3, 4]  # every logging window, with its step
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"results.json", "keep_masks.png", "metrics.json", "convergence.json", "checkpoint"} <= names
        local = client.download_artifacts(run.info.run_id, "checkpoint/model.safetensors", str(root / "dl"))
        assert Path(local).stat().st_size > 0
        assert Path(run.data.tags["checkpoint_uri"], "model.safetensors").is_file()  # in the output folder
        assert str(root / "out") in run.data.tags["checkpoint_uri"]


def test_second_run_reuses_the_cached_dense_model(first):
    root, _ = first
    again = cli(["benchmark", "benchmark-tiny", "--out", root / "again", "--json",
                 "--set", "benchmark.methods=[random]", "--set", "benchmark.seeds=[0]"], env=_env(root))
    assert again["dense_reused"] is True and again["trials"] == 2


def test_tune_without_from_reuses_the_cached_dense_model(first):
    root, _ = first
    out = root / "tune"
    result = cli(["tune", "dynamicvit", "--config", "benchmark-tiny", "--num-samples", "1", "--name", "cached",
                  "--set", f"out={out}", "--set", f"data.root={root / 'out' / 'data'}", "--json"], env=_env(root))
    assert result["trials"] == 1
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [r for r in runs if r.data.tags.get("prunebench.kind") == "train"]  # nothing trained again
    assert (out / "dense.safetensors").is_file()


def test_dense_key_changes_with_data_and_dense_config_only(tmp_path):
    data = tmp_path / "data"
    generate(data, SynthSpec(videos=2, valid_videos=1, frames=3, height=32, width=48), workers=1)
    other = tmp_path / "other"
    generate(other, SynthSpec(videos=2, valid_videos=1, frames=3, height=32, width=48, seed=1), workers=1)
    splits = {d: (YTVISDataset(d, "train"), YTVISDataset(d, "valid")) for d in (data, other)}
    base = load_config("benchmark-tiny", {"data.root": str(data), "out": str(tmp_path / "a")})
    key = dense_key(base, *splits[data])
    same = load_config("benchmark-tiny", {"data.root": str(data), "out": str(tmp_path / "b"), "finetune.steps": 9,
                                          "benchmark.seeds": [5]})
    assert dense_key(same, *splits[data]) == key  # the output folder and the sparse stage do not matter
    assert dense_key(base, *splits[other]) != key  # other data
    lr = load_config("benchmark-tiny", {"data.root": str(data), "train.lr": 3e-4})
    assert dense_key(lr, *splits[data]) != key  # another dense recipe
    bf16 = load_config("benchmark-tiny", {"data.root": str(data), "precision": "bf16"})
    assert dense_key(bf16, *splits[data]) != key  # another precision
    dense_fp32 = load_config("benchmark-tiny", {"data.root": str(data), "precision": "bf16", "dense_precision": "fp32"})
    assert dense_key(dense_fp32, *splits[data]) == key  # fine-tuned in bf16 from the same fp32 dense model
    dense_bf16 = load_config("benchmark-tiny", {"data.root": str(data), "dense_precision": "bf16"})
    assert dense_key(dense_bf16, *splits[data]) == dense_key(bf16, *splits[data])
    calls = []

    def train_into(target):
        calls.append(target)
        target.write_bytes(b"weights")

    os.environ["PRUNEBENCH_CACHE"] = str(tmp_path / "cache")
    try:
        first = dense_model(base, *splits[data], tmp_path / "a.safetensors", train_into)
        second = dense_model(same, *splits[data], tmp_path / "b.safetensors", train_into)
        third = dense_model(lr, *splits[data], tmp_path / "c.safetensors", train_into)
    finally:
        del os.environ["PRUNEBENCH_CACHE"]
    assert (first.reused, second.reused, third.reused) == (False, True, False) and len(calls) == 2
    assert (tmp_path / "b.safetensors").read_bytes() == b"weights"


def test_benchmark_grid_brackets_and_bad_settings_exit_2(tmp_path):
    config = load_config("benchmark-tiny")
    specs = benchmark_specs(config)
    assert len(specs) == TRIALS and len({s.label for s in specs}) == TRIALS
    done = cli(["benchmark", "benchmark-tiny", "--out", tmp_path / "x", "--set", "benchmark.settings=[0.45, 0.6]"],
               check=False, env=_env(tmp_path))
    assert done.returncode == 2 and "do not bracket the goal PKR 0.4" in done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "x").exists()


def test_killed_benchmark_resumes_without_lost_or_duplicated_trials(tmp_path):
    out = tmp_path / "out"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    # watch Ray's storage, not MLflow: a second client creating the SQLite schema would race the driver's
    kill_driver_when(["benchmark", "benchmark-tiny", "--out", out, "--json"],
                     lambda: len(list((out / "ray_results" / "benchmark-tiny").glob("*/checkpoint_000000"))) >= 2,
                     env=_env(tmp_path))
    resumed = cli(["benchmark", "benchmark-tiny", "--out", out, "--resume", "--json"], env=_env(tmp_path))
    assert resumed["trials"] == TRIALS
    _, runs = _eval_runs(uri)
    trials = [r for r in runs if r.data.tags["method"] != "dense"]
    ids = [r.data.tags["trial_id"] for r in trials]
    assert len(ids) == len(set(ids)) == TRIALS  # none lost, none twice
    assert all(r.info.status == "FINISHED" and "AP" in r.data.metrics for r in trials)
