"""Reports from an MLflow store filled with known runs: every number, the fronts, the HTML."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from prunebench.errors import ConfigError
from prunebench.platform.tracking import Tracker, resolve_tracking_uri
from prunebench.reports.leaderboard import build_leaderboards, fetch_runs, interpolate_at
from prunebench.reports.pareto import hypervolume, pareto_front
from prunebench.reports.report import method_fronts, write_report

KEEP = [1.0] * 12


def _log(tracker, experiment, key, method, target, metrics, seed="0", backbone="vit_tiny", dataset="d1", keep=KEEP):
    run = tracker.run(experiment, key, name=key, tags={"prunebench.kind": "eval", "method": method,
                                                       "target": "" if target is None else f"{target:.2f}",
                                                       "backbone": backbone, "dataset": dataset})
    tracker.log_params(run, {"seed": seed, "eval.seed": "0", "method": method})
    tracker.log_metrics(run, {**metrics, **{f"per_block_keep_{i:02d}": v for i, v in enumerate(keep)}})
    tracker.end(run)


VPP_TRIALS = [(0.47, 37.0), (0.66, 41.0), (0.64, 36.0)]  # tuning trials, no target, > 0.05 from both buckets; 0.64 is dominated


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    uri = resolve_tracking_uri(None, root)
    tracker = Tracker(uri)
    exp = tracker.experiment("known")
    base = {"mAP_bbox": 50.0, "mAP_segm": 45.0, "gmacs": 1.0, "gmacs_dense": 1.0, "fps_model": 10.0, "ioi_all": 100.0, "ioi_S": 100.0}
    _log(tracker, exp, "dense-0", "dense", None, {**base, "AP": 40.0, "pkr": 1.0}, seed="0")
    _log(tracker, exp, "dense-1", "dense", None, {**base, "AP": 42.0, "pkr": 1.0}, seed="1")
    vpp = {**base, "gmacs": 0.6, "fps_model": 14.0, "ioi_all": 80.0}
    _log(tracker, exp, "vpp55-0", "vpp", 0.55, {**vpp, "AP": 38.0, "pkr": 0.52}, seed="0", keep=[1.0] + [0.5] * 11)
    _log(tracker, exp, "vpp55-1", "vpp", 0.55, {**vpp, "AP": 40.0, "pkr": 0.54}, seed="1", keep=[1.0] + [0.5] * 11)
    _log(tracker, exp, "vpp40", "vpp", 0.40, {**vpp, "AP": 35.0, "pkr": 0.39, "gmacs": 0.45})
    for i, (pkr, ap) in enumerate(VPP_TRIALS):
        _log(tracker, exp, f"vpp-trial-{i}", "vpp", None, {**vpp, "AP": ap, "pkr": pkr})
    dyn = {k: v for k, v in base.items() if k != "fps_model"}  # a missing metric
    _log(tracker, exp, "dyn55", "dynamicvit", 0.55, {**dyn, "AP": 30.0, "pkr": 0.544, "gmacs": 0.62})
    empty = tracker.experiment("empty")
    nodense = tracker.experiment("no-dense")
    _log(tracker, nodense, "lonely", "vpp", 0.55, {**vpp, "AP": 1.0, "pkr": 0.5})
    mixed = tracker.experiment("mixed")
    for backbone in ("vit_tiny", "vit_small"):
        _log(tracker, mixed, f"{backbone}-dense", "dense", None, {**base, "AP": 40.0, "pkr": 1.0}, backbone=backbone)
        _log(tracker, mixed, f"{backbone}-vpp", "vpp", 0.55, {**vpp, "AP": 30.0 if backbone == "vit_tiny" else 50.0,
                                                                "pkr": 0.55}, backbone=backbone)
    del empty
    return root, uri


def _rows(uri, experiment="known"):
    (board,) = build_leaderboards(fetch_runs(uri, experiment))
    return {(r.method, r.target): r for r in board.rows}


def test_leaderboard_numbers(store):
    _, uri = store
    rows = _rows(uri)
    assert set(rows) == {("dense", None), ("vpp", 0.55), ("vpp", 0.40), ("dynamicvit", 0.55)}
    dense = rows["dense", None]
    assert dense.seeds == 2 and dense.mean["AP"] == 41.0 and dense.std["AP"] == pytest.approx(2**0.5)
    vpp = rows["vpp", 0.55]
    assert vpp.seeds == 2  # the tuning trials are in no bucket (PKR 0.47 / 0.64 / 0.66 are > 0.05 away)
    assert vpp.mean["AP"] == 39.0 and vpp.std["AP"] == pytest.approx(2**0.5) and vpp.mean["pkr"] == pytest.approx(0.53)
    assert vpp.delta_ap == pytest.approx(-2.0)
    # front of all vpp runs: (0.39,35) (0.47,37) (0.52,38) (0.54,40) (0.66,41); at 0.55: 40 + 1/12
    assert vpp.ap_at_target == pytest.approx(40 + 1 / 12)
    assert rows["vpp", 0.40].ap_at_target == pytest.approx(35 + 2 * 0.01 / 0.08)
    assert rows["vpp", 0.40].std["AP"] is None  # one seed: no std
    dyn = rows["dynamicvit", 0.55]
    assert dyn.mean["fps_model"] is None and dyn.mean["AP"] == 30.0 and dyn.delta_ap == pytest.approx(-11.0)
    assert dyn.ap_at_target is None  # a single point at 0.544: 0.55 is outside its front


def test_fronts_exclude_dominated_points_and_hypervolume(store):
    _, uri = store
    runs = [r for r in fetch_runs(uri, "known")]
    fronts = method_fronts(runs, "pkr")
    vpp = fronts["vpp"]
    assert sorted((p["cost"], p["AP"]) for p in vpp["front"]) == [(0.39, 35.0), (0.47, 37.0), (0.52, 38.0),
                                                                   (0.54, 40.0), (0.66, 41.0)]
    expected = 0.08 * 35 + 0.05 * 37 + 0.02 * 38 + 0.12 * 40 + 0.34 * 41
    assert vpp["hypervolume"] == pytest.approx(expected)
    assert method_fronts(runs, "gmacs")["vpp"]["reference"] == 1.0  # the dense model's GMACs


def test_pareto_and_hypervolume_primitives():
    rows = [{"a": 1, "c": 1}, {"a": 2, "c": 2}, {"a": 1, "c": 3}, {"a": None, "c": 0}]
    assert pareto_front(rows, maximize="a", minimize="c") == [{"a": 1, "c": 1}, {"a": 2, "c": 2}]
    assert hypervolume([(1, 1), (2, 2)], (3, 0)) == pytest.approx(1 * 1 + 1 * 2)
    assert hypervolume([(4, 1)], (3, 0)) == 0.0
    assert interpolate_at([{"pkr": 0.4, "AP": 30}, {"pkr": 0.6, "AP": 40}], 0.5) == pytest.approx(35)
    assert interpolate_at([{"pkr": 0.4, "AP": 30}], 0.5) is None


def test_empty_missing_dense_and_mixed_sets(store):
    _, uri = store
    with pytest.raises(ConfigError, match="no finished evaluation runs"):
        build_leaderboards(fetch_runs(uri, "empty"))
    with pytest.raises(ConfigError, match="no dense baseline"):
        build_leaderboards(fetch_runs(uri, "no-dense"))
    with pytest.raises(ConfigError, match="no such MLflow experiment"):
        fetch_runs(uri, "nope")
    boards = build_leaderboards(fetch_runs(uri, "mixed"))
    assert sorted(b.backbone for b in boards) == ["vit_small", "vit_tiny"]  # split, not averaged
    aps = {b.backbone: next(r for r in b.rows if r.method == "vpp").mean["AP"] for b in boards}
    assert aps == {"vit_small": 50.0, "vit_tiny": 30.0}


def test_report_files_and_cli(store, tmp_path, capsys):
    root, uri = store
    result = write_report(uri, tmp_path / "rep", "known")
    names = sorted(Path(f).name for f in result["files"])
    assert names == ["density.png", "leaderboard.md", "leaderboard.parquet", "pareto_fps.png", "pareto_gmacs.png",
                     "pareto_pkr.png", "report.html"]
    table = pq.read_table(tmp_path / "rep" / "leaderboard.parquet").to_pylist()
    assert len(table) == 4 and {r["method"] for r in table} == {"dense", "vpp", "dynamicvit"}
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "| vpp | 55 | 53.0 ± 1.4 |" in md and "39.0 ± 1.4" in md and "-2.0" in md
    from prunebench.platform.cli import main

    assert main(["report", "--experiment", "known", "--out", str(tmp_path / "cli"), "--tracking-uri", uri, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"leaderboard", "files"} and len(out["leaderboard"]) == 4
    assert main(["report", "--experiment", "empty", "--out", str(tmp_path / "e"), "--tracking-uri", uri]) == 2
    assert not (tmp_path / "e" / "report.html").exists()


@pytest.mark.slow
def test_report_renders_in_headless_chromium(store, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (make test / .ci/run install it)"
    _, uri = store
    write_report(uri, tmp_path, "known")
    page = (tmp_path / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", dom.stdout).group(1)
    assert title == "prunebench report: 4/4 figures, 3/3 tables", title
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1400,2600", page],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2600)
    assert len(set(image.resize((140, 260)).getdata())) > 200  # tables and plots, not a blank page
