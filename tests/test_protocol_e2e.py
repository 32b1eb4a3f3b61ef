"""End to end on tiny synthetic data: train → fine-tune → eval for every method, through the CLI."""

import json

import pytest
from safetensors import safe_open

from prunebench.models.presets import params_for_target
from platform_helpers import TINY_DEMO_ARGS, write_config
from prunebench.platform.cli import main

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    return root, write_config(root, eval={"threads": 2})


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.fixture(scope="module")
def dense(setup):
    root, path = setup
    code = main(["train", str(path), "--json"])
    assert code == 0
    return root / "runs" / "dense.safetensors"


def test_dense_checkpoint_records_what_it_is(dense):
    with safe_open(str(dense), framework="pt") as handle:
        meta = json.loads(handle.metadata()["prunebench"])
    assert meta["method"] == "dense" and meta["seed"] == 0 and meta["code_version"]
    assert meta["config"]["train"]["steps"] == 3 and meta["category_ids"] == [1, 2, 3, 4, 5]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vpp", "dynamicvit", "tps", "svit"])
def test_finetune_and_eval_every_method(setup, dense, capsys, method):
    root, path = setup
    params = params_for_target(method, 0.40)
    sets = [f"method.name={method}", f"method.params={json.dumps(params)}"]
    overrides = [a for s in sets for a in ("--set", s)]
    trained = _run(capsys, ["finetune", str(path), "--from", str(dense), "--json", *overrides])
    assert set(trained) >= {"checkpoint", "mlflow_run_id"}
    metrics = _run(capsys, ["eval", str(path), "--checkpoint", trained["checkpoint"], "--json", *overrides])
    for key in ("AP", "mAP_bbox", "mAP_segm", "pkr", "per_block_keep", "ioi", "gmacs", "fps_backbone", "fps_model"):
        assert key in metrics, key
    assert metrics["method"] == method and metrics["params"]["stochastic_inference" if method in ("vpp", "svit") else "positions"] is not None
    assert 0 < metrics["pkr"] < 1 and len(metrics["per_block_keep"]) == 12
    assert metrics["gmacs"] < metrics["gmacs_dense"]
    results = json.loads((root / "runs" / "eval" / method / "results.json").read_text())
    assert isinstance(results, list)
    scored = _run(capsys, ["metrics", str(root / "data" / "annotations" / "instances_valid.json"),
                           str(root / "runs" / "eval" / method / "results.json"), "--json"])
    assert scored["AP"] == pytest.approx(metrics["AP"])


def test_dense_eval_and_gt_scores_100(setup, dense, capsys):
    root, path = setup
    metrics = _run(capsys, ["eval", str(path), "--checkpoint", str(dense), "--no-timing", "--json"])
    assert metrics["pkr"] == 1.0 and metrics["ioi"]["all"] == pytest.approx(100.0)
    gt_path = root / "data" / "annotations" / "instances_valid.json"
    gt = json.loads(gt_path.read_text())
    perfect = [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 1.0,
                "segmentations": a["segmentations"]} for a in gt["annotations"]]
    (root / "perfect.json").write_text(json.dumps(perfect))
    assert _run(capsys, ["metrics", str(gt_path), str(root / "perfect.json"), "--json"])["AP"] == pytest.approx(100.0)


@pytest.mark.slow
def test_demo_end_to_end_on_tiny_settings(tmp_path, capsys):
    """The main job with its embedded preset shrunk: data, dense, 8 fine-tunes, timing, MLflow, report."""
    out = tmp_path / "demo"
    result = _run(capsys, ["demo", "--out", str(out), "--json", *TINY_DEMO_ARGS])
    methods = {"vpp", "dynamicvit", "tps", "svit"}
    assert {(r["method"], r["goal_pkr"]) for r in result["leaderboard"]} == {(m, g) for m in methods for g in (0.55, 0.40)}
    assert all("converged" in r for r in result["leaderboard"])
    assert "too short to rank methods" in result["caveat"] and "prunebench benchmark benchmark-cpu" in result["caveat"]
    assert (out / "report" / "report.html").exists() and (out / "report" / "leaderboard.parquet").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result["mlflow_tracking_uri"])
    runs = client.search_runs([result["mlflow_experiment_id"]], filter_string="tags.`prunebench.kind` = 'eval'")
    assert len(runs) == 9 and all("fps_model" in r.data.metrics for r in runs)  # every model timed
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["target"] for r in runs if r.data.tags["method"] != "dense"} == {"0.55", "0.40"}
    assert any(f.endswith("report.html") for f in result["report_files"])
    import pyarrow.parquet as pq

    settings = pq.read_table(out / "report" / "settings.parquet").to_pylist()
    assert len(settings) == 9 and {r["method"] for r in settings} == {"dense", *methods}


def test_bench_dense_vs_every_method(setup, capsys):
    root, path = setup
    result = _run(capsys, ["bench", str(path), "--frames", "3", "--warmup", "1", "--calibration-steps", "1", "--json"])
    assert set(result) == {"dense", "vpp", "dynamicvit", "tps", "svit", "settings"}
    for method in ("dense", "vpp", "dynamicvit", "tps", "svit"):
        assert {"latency_ms", "speedup", "gmacs_ratio"} <= set(result[method])
    assert result["dense"]["speedup"] == 1.0 and result["dense"]["gmacs_ratio"] == 1.0
    assert result["dynamicvit"]["pkr"] < 0.5  # the 0.40 preset (counted in eval mode: GMACs ratio 2.4 at 24 tokens)
    assert main(["bench", str(path), "--frames", "0"]) == 2
    assert main(["bench", str(path), "--calibration-steps", "-1"]) == 2
