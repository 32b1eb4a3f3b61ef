"""Reports from an MLflow store filled with known runs: every number, the fronts, the HTML."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.stats

from prunebench.errors import ConfigError
from prunebench.platform.tracking import Tracker, resolve_tracking_uri
from prunebench.reports.leaderboard import (
    EvalRun,
    GoalRow,
    SeedPoint,
    _compare,
    _rank,
    build_leaderboards,
    fetch_runs,
    markdown,
)
from prunebench.reports.pareto import hypervolume, pareto_front
from prunebench.reports.recovery import recovery_table
from prunebench.reports.report import method_fronts, write_report

KEEP = [1.0] * 12
VIDEOS = ("1", "2", "3", "4")


def _log(tracker, experiment, key, method, setting, metrics, seed="0", backbone="vit_tiny", dataset="d1", keep=KEEP,
         converged=None, per_video=None, history=(), precision=None):
    tags = {"prunebench.kind": "eval", "method": method, "backbone": backbone, "dataset": dataset, "seed": seed}
    if setting is not None:
        tags["setting"] = setting
    run = tracker.run(experiment, key, name=key, tags=tags)
    params = {"seed": seed, "eval.seed": seed, "method": method}
    tracker.log_params(run, params if precision is None else {**params, "precision": precision})
    extra = {f"per_block_keep_{i:02d}": v for i, v in enumerate(keep)}
    if converged is not None:
        extra.update({"converged": float(converged), "final_keep_b3": 0.5, "target_keep_b3": 0.5})
    extra.update({f"per_video_AP_{v}": a for v, a in (per_video or {}).items()})
    tracker.log_metrics(run, {**metrics, **extra})
    for step, loss, keep3 in history:
        tracker.log_metrics(run, {"train_task_loss": loss, "train_keep_b3": keep3}, step=step)
    tracker.end(run)


# (method, seed) -> [(setting, PKR, AP)]; per-video AP = AP + video offset (vpp) or AP - offset (others)
CURVES = {
    ("vpp", "0"): [("0.35", 0.36, 30.0), ("0.60", 0.58, 38.0)],
    ("vpp", "1"): [("0.35", 0.34, 32.0), ("0.60", 0.60, 40.0)],
    ("random", "0"): [("0.35", 0.35, 25.0), ("0.60", 0.59, 33.0)],
    ("random", "1"): [("0.35", 0.35, 27.0), ("0.60", 0.59, 36.0)],
    ("dynamicvit", "0"): [("0.35", 0.36, 28.0), ("0.50", 0.50, 30.0)],  # never reaches 0.55
    ("dynamicvit", "1"): [("0.35", 0.36, 29.0), ("0.50", 0.50, 31.0)],
}
OFFSET = {"1": 0.0, "2": 1.0, "3": 3.0, "4": 6.0}


def _per_video(method, ap):
    sign = 1.0 if method == "vpp" else -1.0
    return {v: ap + sign * o for v, o in OFFSET.items()}


def _recovery(method, seed):
    """Scene-cut metrics of the vpp and random runs: frame IoI by frames since a cut / white frames."""
    if method not in ("vpp", "random"):
        return {}
    drop = 50.0 if method == "vpp" else 30.0
    return {"recovery_cut_m1": 90.0, "recovery_cut_0": 90.0 - drop + int(seed), "recovery_cut_1": 85.0,
            "recovery_blank_0": 20.0, "recovery_blank_1": 80.0 + int(seed)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    uri = resolve_tracking_uri(None, root)
    tracker = Tracker(uri)
    exp = tracker.experiment("known")
    base = {"mAP_bbox": 50.0, "mAP_segm": 45.0, "gmacs": 1.0, "gmacs_dense": 1.0, "fps_model": 10.0, "ioi_all": 100.0}
    _log(tracker, exp, "dense", "dense", None, {**base, "AP": 40.0, "pkr": 1.0})
    for (method, seed), points in CURVES.items():
        for setting, pkr, ap in points:
            converged = not (method == "dynamicvit" and seed == "1" and setting == "0.50")
            _log(tracker, exp, f"{method}-{setting}-{seed}", method, setting,
                 {**base, "AP": ap, "pkr": pkr, "gmacs": pkr, **_recovery(method, seed)}, seed=seed, keep=[1.0] + [pkr] * 11,
                 converged=converged, per_video=_per_video(method, ap),
                 history=[(10, 2.0, 0.6), (20, 1.5, 0.52), (30, 1.49, 0.5)])
    tracker.experiment("empty")
    nodense = tracker.experiment("no-dense")
    _log(tracker, nodense, "lonely", "vpp", "0.35", {**base, "AP": 1.0, "pkr": 0.5})
    mixed = tracker.experiment("mixed")
    for backbone in ("vit_tiny", "vit_small"):
        _log(tracker, mixed, f"{backbone}-dense", "dense", None, {**base, "AP": 40.0, "pkr": 1.0}, backbone=backbone)
        _log(tracker, mixed, f"{backbone}-vpp", "vpp", "0.55", {**base, "AP": 30.0 if backbone == "vit_tiny" else 50.0,
                                                                "pkr": 0.55}, backbone=backbone)
    precisions = tracker.experiment("precisions")
    for precision, fps in (("fp32", 10.0), ("bf16", 25.0)):
        _log(tracker, precisions, f"{precision}-dense", "dense", None, {**base, "AP": 40.0, "pkr": 1.0, "fps_model": fps},
             precision=precision)
        _log(tracker, precisions, f"{precision}-vpp", "vpp", "0.55", {**base, "AP": 39.0, "pkr": 0.55,
                                                                       "fps_model": 2 * fps}, precision=precision)
    return root, uri


def _goal_rows(uri, experiment="known"):
    (board,) = build_leaderboards(fetch_runs(uri, experiment))
    return board, {(r.method, r.goal): r for r in board.goals}


def _at(method, seed, goal):
    (_, x0, y0), (_, x1, y1) = CURVES[method, seed]
    return y0 + (y1 - y0) * (goal - x0) / (x1 - x0)


def test_ap_at_goal_per_seed_with_student_t_interval(store):
    _, uri = store
    board, rows = _goal_rows(uri)
    assert board.dense.mean["AP"] == 40.0
    per_seed = [_at("vpp", s, 0.40) for s in ("0", "1")]
    vpp = rows["vpp", 0.40]
    assert vpp.ap_at_goal == pytest.approx(np.mean(per_seed))
    low, high = scipy.stats.t.interval(0.95, 1, loc=np.mean(per_seed), scale=scipy.stats.sem(per_seed))
    assert vpp.ap_ci == pytest.approx((low, high))
    assert vpp.delta_ap_dense == pytest.approx(np.mean(per_seed) - 40.0)
    assert vpp.delta_ap_dense_ci == pytest.approx((low - 40.0, high - 40.0))
    assert vpp.as_dict()["seeds"] == 2 and vpp.as_dict()["converged"] is True


def test_delta_against_random_is_paired_by_seed(store):
    _, uri = store
    _, rows = _goal_rows(uri)
    ours = [_at("vpp", s, 0.55) for s in ("0", "1")]
    control = [_at("random", s, 0.55) for s in ("0", "1")]
    result = scipy.stats.ttest_rel(ours, control)
    vpp = rows["vpp", 0.55]
    assert vpp.delta_ap_random == pytest.approx(np.mean(np.subtract(ours, control)))
    assert vpp.delta_ap_random_ci == pytest.approx(tuple(result.confidence_interval(0.95)))
    assert rows["random", 0.55].delta_ap_random is None  # the control itself


def test_paired_test_against_vpp_is_over_seeds_of_video_means(store):
    _, uri = store
    _, rows = _goal_rows(uri)
    offset = np.mean(list(OFFSET.values()))
    ours = [_at("random", s, 0.40) - offset for s in ("0", "1")]
    theirs = [_at("vpp", s, 0.40) + offset for s in ("0", "1")]
    expected = scipy.stats.ttest_rel(ours, theirs).pvalue
    random_row = rows["random", 0.40]
    assert random_row.p_vs_vpp == pytest.approx(expected)
    assert random_row.significant_vs_vpp is bool(expected < 0.05)
    assert rows["vpp", 0.40].p_vs_vpp is None


def test_a_seed_shift_shared_by_every_video_is_not_a_difference():
    """Two seeds, 30 videos: the method is 3 AP above VPP on every video of one seed and 1 AP below on every
    video of the other. The seed is the unit of replication, so this is no evidence of a difference (a test
    over the 60 (seed, video) pairs as if independent gave p < 0.001)."""
    videos = [str(v) for v in range(30)]

    def row(method, shift):
        seeds = {s: SeedPoint(30.0 + d, {v: 30.0 + d + v_i % 5 for v_i, v in enumerate(videos)}, [])
                 for s, d in zip(("0", "1"), shift)}
        return GoalRow(method, 0.40, seeds, 2, None)

    rows = [row("vpp", (0.0, 0.0)), row("svit", (3.0, -1.0))]
    _compare(rows)
    assert rows[1].p_vs_vpp == pytest.approx(scipy.stats.ttest_rel([33.0, 29.0], [30.0, 30.0]).pvalue)
    assert rows[1].significant_vs_vpp is False


def test_no_extrapolation_and_unconverged_rows_are_not_ranked(store):
    _, uri = store
    board, rows = _goal_rows(uri)
    dyn55 = rows["dynamicvit", 0.55]
    assert not dyn55.bracketed and dyn55.ap_at_goal is None and dyn55.rank is None  # PKRs stop at 0.50
    assert dyn55.as_dict()["ap_nearest"] == pytest.approx(30.5)  # the 0.50 setting, both seeds
    dyn40 = rows["dynamicvit", 0.40]
    assert dyn40.ap_at_goal is not None and dyn40.converged is False and dyn40.rank is None
    ranked = [r.method for r in board.goals if r.goal == 0.40 and r.rank is not None]
    assert ranked == ["vpp", "random"]  # by AP@goal, converged rows only
    order = [r.method for r in board.goals if r.goal == 0.40]
    assert order == ["vpp", "random", "dynamicvit"]


def test_fronts_and_hypervolume(store):
    _, uri = store
    runs = fetch_runs(uri, "known")
    fronts = method_fronts(runs, "pkr")
    vpp = fronts["vpp"]
    # vpp points (PKR, AP): (0.34,32) (0.36,30) (0.58,38) (0.60,40); (0.36,30) is dominated by (0.34,32)
    assert sorted((p["cost"], p["AP"]) for p in vpp["front"]) == [(0.34, 32.0), (0.58, 38.0), (0.60, 40.0)]
    assert vpp["hypervolume"] == pytest.approx(0.24 * 32 + 0.02 * 38 + 0.40 * 40)
    assert method_fronts(runs, "gmacs")["vpp"]["reference"] == 1.0  # the dense model's GMACs


def test_pareto_and_hypervolume_primitives():
    rows = [{"a": 1, "c": 1}, {"a": 2, "c": 2}, {"a": 1, "c": 3}, {"a": None, "c": 0}]
    assert pareto_front(rows, maximize="a", minimize="c") == [{"a": 1, "c": 1}, {"a": 2, "c": 2}]
    assert hypervolume([(1, 1), (2, 2)], (3, 0)) == pytest.approx(1 * 1 + 1 * 2)
    assert hypervolume([(4, 1)], (3, 0)) == 0.0


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
    aps = {b.backbone: next(r for r in b.settings if r.method == "vpp").mean["AP"] for b in boards}
    assert aps == {"vit_small": 50.0, "vit_tiny": 30.0}


def test_scene_cut_table_averages_the_setting_nearest_the_goal(store):
    board, _ = _goal_rows(store[1])
    records = {(r["after"], r["method"]): r for r in recovery_table(board, 0.55)}
    assert set(records) == {(a, m) for a in ("cut", "blank") for m in ("vpp", "random")}  # no "start" was logged
    vpp_cut = records["cut", "vpp"]
    assert vpp_cut["setting"] == "0.60" and vpp_cut["t-1"] == 90.0 and vpp_cut["t+0"] == 40.5 and vpp_cut["t+2"] is None
    assert records["blank", "random"]["t+1"] == 80.5 and "t-1" not in records["blank", "random"]


def test_precisions_get_leaderboards_of_their_own(store):
    _, uri = store
    boards = build_leaderboards(fetch_runs(uri, "precisions"))
    assert sorted(b.precision for b in boards) == ["bf16", "fp32"]  # split: FPS never in one column
    fps = {b.precision: (b.dense.mean["fps_model"], b.settings[0].mean["fps_model"], b.dense.seeds) for b in boards}
    assert fps == {"fp32": (10.0, 20.0, 1), "bf16": (25.0, 50.0, 1)}
    text = markdown(boards)
    assert "### vit_tiny · dataset d1 · bf16" in text and "### vit_tiny · dataset d1 · fp32" in text
    (known,) = build_leaderboards(fetch_runs(uri, "known"))
    assert known.precision == "fp32"  # runs logged without the param ran before the setting existed: fp32


def test_report_files_and_cli(store, tmp_path, capsys):
    root, uri = store
    result = write_report(uri, tmp_path / "rep", "known")
    names = sorted(Path(f).name for f in result["files"])
    assert names == ["density.png", "leaderboard.md", "leaderboard.parquet", "learning_curves.png", "pareto_fps.png",
                     "pareto_gmacs.png", "pareto_pkr.png", "report.html", "scene_cuts.png", "settings.parquet"]
    table = pq.read_table(tmp_path / "rep" / "leaderboard.parquet").to_pylist()
    assert len(table) == 6 and {(r["method"], r["goal_pkr"]) for r in table} == {
        (m, g) for m in ("vpp", "random", "dynamicvit") for g in (0.55, 0.40)}
    contract = {"method", "goal_pkr", "ap_at_goal", "ap_ci", "delta_ap_dense", "delta_ap_random", "significant_vs_vpp",
                "converged", "seeds", "pkr"}
    assert all(contract <= set(r) for r in table)
    assert {(r["backbone"], r["precision"]) for r in table} == {("vit_tiny", "fp32")}
    settings = pq.read_table(tmp_path / "rep" / "settings.parquet").to_pylist()
    assert len(settings) == 7  # dense + 3 methods x 2 settings
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "| vpp | 0.35 | 2 | 35.0 ± 1.4 | 31.0 ± 1.4 |" in md and "not bracketed" in md and "**no** (3/4)" in md
    from prunebench.platform.cli import main

    assert main(["report", "--experiment", "known", "--out", str(tmp_path / "cli"), "--tracking-uri", uri, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"leaderboard", "files"} and len(out["leaderboard"]) == 6
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
    assert title == "prunebench report: 6/6 figures, 7/7 tables", title
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1400,2600", page],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2600)
    assert len(set(image.resize((140, 260)).getdata())) > 200  # tables and plots, not a blank page


def _judged_row(method: str, ap: float, verdicts: tuple) -> GoalRow:
    """A goal row of one seed whose runs carry the given convergence verdicts (None: no verdict logged)."""
    runs = [EvalRun(f"{method}-{i}", method, "0.5", "vit_tiny", "d1", "0", {"pkr": 0.4}, None, converged=v)
            for i, v in enumerate(verdicts)]
    row = GoalRow(method, 0.40, {"0": SeedPoint(ap, {}, runs)}, 1, None)
    row.ap_at_goal = ap
    return row


def test_rows_that_print_the_same_ap_share_a_rank():
    rows = _rank([_judged_row("a", 28.34, (True,)), _judged_row("b", 28.71, (True,)),
                  _judged_row("c", 28.26, (True,)), _judged_row("d", 24.6, (True,))])
    assert [(r.method, r.rank) for r in rows] == [("b", 1), ("a", 2), ("c", 2), ("d", 4)]


def test_a_run_without_a_verdict_keeps_its_row_unranked():
    """Among judged runs, one that logged no convergence verdict has not been shown to converge."""
    mixed, judged, unjudged = (_judged_row("mixed", 30.0, (True, None)), _judged_row("judged", 20.0, (True, True)),
                               _judged_row("unjudged", 25.0, (None, None)))
    ranked = _rank([mixed, judged, unjudged])
    assert [(r.method, r.rank) for r in ranked] == [("judged", 1), ("mixed", None), ("unjudged", None)]
    assert mixed.converged is False and mixed.as_dict()["converged_runs"] == "1/2"
    assert unjudged.converged is None and unjudged.as_dict()["converged_runs"] is None
