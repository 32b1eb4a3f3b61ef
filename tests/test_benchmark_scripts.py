"""The speed benchmarks run end to end on tiny settings and print their tables (their numbers are not checked:
speed claims come from full runs, docs/performance.md)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from platform_helpers import TINY_DEMO_ARGS

ROOT = Path(__file__).resolve().parents[1]


def _call(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def _run(script: str, *args: str) -> str:
    done = _call(script, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_backbone_latency_prints_a_table_per_size_and_the_summary():
    out = _run("backbone_latency.py", "--tokens", "112", "240", "--batches", "1", "--runs", "1", "--warmup", "1",
               "--repeats", "2", "--calibration-steps", "1", "--methods", "dynamicvit")
    assert "112 tokens (128x224), batch 1" in out and "240 tokens (192x320), batch 1" in out
    summary = out.split("Summary")[1]
    assert "| 112 tok, b1 | 240 tok, b1 |" in summary
    assert "| dynamicvit |" in summary and "| dense, fewer tokens |" in summary
    rows = [line.split("|") for line in out.split("Summary")[0].splitlines() if line.startswith(("| dense", "| dynamicvit"))]
    assert len(rows) == 6 and all(float(r[6]) <= float(r[5]) for r in rows)  # min ms: the fastest frame of all repeats


def test_train_step_splits_a_step_into_its_phases():
    out = _run("train_step.py", "--steps", "2", "--warmup", "1", "--precisions", "fp32")
    for phase in ("data", "backbone", "pixel decoder", "loss + matching", "optimizer", "backward + rest", "step"):
        assert f"| {phase} |" in out, phase
    assert "| fp32 |" in out and "| 1.00 | 1.00 |" in out


def test_eval_counting_times_the_three_ways_per_method():
    out = _run("eval_counting.py", "--methods", "dynamicvit", "vpp", "--frames", "2", "--repeats", "1")
    assert "| dynamicvit | no |" in out and "| vpp | yes |" in out


def test_attention_kernels_times_both_kernels_and_marks_the_chosen_one():
    out = _run("attention_kernels.py", "--tokens", "112", "480", "--runs", "1", "--warmup", "0", "--batch", "1")
    assert "| forward + backward | bf16 | 112 |" in out and "| forward | fp32 | 480 |" in out
    rows = {tuple(cell.strip() for cell in line.split("|")[1:4]): line for line in out.splitlines()
            if line.startswith("| forward")}
    assert rows[("forward + backward", "bf16", "112")].split("|")[5].strip().endswith("*")  # math, short bf16 training
    assert rows[("forward + backward", "bf16", "480")].split("|")[4].strip().endswith("*")  # fused
    assert rows[("forward", "bf16", "112")].split("|")[4].strip().endswith("*")  # fused: no backward pass


def test_platform_overhead_times_bare_ray_train_idle_ray_a_ray_task_and_a_background_load_after_the_warm_up_epoch():
    out = _run("platform_overhead.py", "--steps", "32", "--repeats", "1", "--trials", "0", "--threads", "1",
               "--idle-ray", "--ray-task", "--background-load", "0.05")
    assert "mean after the first epoch (16 steps)" in out
    row = next(line for line in out.splitlines() if line.startswith("| 1 | bare, idle Ray, Ray task, load, Ray |"))
    cells = [float(c) for c in row.split("|")[3:-1]]
    (bare_step, ray_step, ratio, idle_step, idle_ratio, task_step, task_ratio, load_step, load_ratio, bare_warm, ray_warm,
     bare_wall, ray_wall, other_bare, other_idle, other_task, other_load) = cells
    assert min(bare_step, ray_step, idle_step, task_step, load_step, bare_warm, ray_warm) > 0
    for step, shown in ((ray_step, ratio), (idle_step, idle_ratio), (task_step, task_ratio), (load_step, load_ratio)):
        assert abs(shown - step / bare_step) < 0.01
    assert bare_wall > 0 and ray_wall > 0
    # the burner's CPU shows in the other processes' share; Ray's idle processes use some too
    assert other_load > max(0.02, other_bare)
    assert other_idle > 0 and other_task > 0
    assert "Ray Train ÷ bare loop, per step: median" in out
    assert "Bare loop beside an idle Ray Train run ÷ bare loop alone: median" in out
    assert "Bare loop inside a plain Ray task ÷ bare loop alone: median" in out
    assert "Bare loop beside a synthetic load of 0.05 cores ÷ bare loop alone: median" in out


def test_platform_overhead_refuses_fewer_steps_than_two_epochs():
    done = _call("platform_overhead.py", "--steps", "20", "--trials", "0")
    assert done.returncode == 2
    assert "--steps 20: allowed: at least two epochs (32 steps)" in done.stderr
    assert "Traceback" not in done.stderr


def test_platform_overhead_refuses_a_background_load_of_a_core_or_more():
    done = _call("platform_overhead.py", "--background-load", "1.5", "--trials", "0")
    assert done.returncode == 2
    assert "--background-load 1.5: allowed: more than 0 and less than 1 (cores)" in done.stderr
    assert "Traceback" not in done.stderr


def _benchmark_module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_the_interval_of_the_pairs_ratios():
    ratio_interval = _benchmark_module("ratios").ratio_interval
    assert ratio_interval([1.1]) == ""  # one pair: no interval
    text = ratio_interval([1.0, 1.1, 1.2])
    mean = float(text.split("geometric mean ")[1].split(",")[0])
    low, high = (float(x) for x in text.split("95 % CI ")[1].split("–"))
    assert mean == pytest.approx((1.0 * 1.1 * 1.2) ** (1 / 3), abs=1e-3)
    assert low < mean < high and low > 0.7 and high < 1.6


@pytest.mark.slow
def test_demo_time_times_a_fresh_demo_phase_by_phase(tmp_path):
    out = _run("demo_time.py", *TINY_DEMO_ARGS, "--logs", str(tmp_path))
    row = next(line for line in out.splitlines() if line.startswith("| 1 | after | this checkout |"))
    wall, *phases = (float(c) for c in row.split("|")[4:10])
    assert all(p >= 0 for p in phases) and abs(sum(phases) - wall) < 3  # whole seconds, the phases fill the wall time
    assert "[4/4] report" in (tmp_path / "pair1-after.log").read_text()  # the run's log, kept where asked
    aps = [line for line in out.splitlines() if line.startswith(("| dynamicvit @ PKR", "| vpp @ PKR"))]
    assert len(aps) == 4 and "After ÷ before" not in out


def test_demo_time_pairs_before_and_after_into_ratios(capsys):
    demo_time = _benchmark_module("demo_time")
    phases = dict.fromkeys(demo_time.PHASES, 10.0)
    runs = [(1, "before", demo_time.DemoRun("abc", 50.0, phases, {"vpp @ PKR 0.4": 20.0})),
            (1, "after", demo_time.DemoRun("this checkout", 40.0, {**phases, "trials": 5.0}, {"vpp @ PKR 0.4": 20.0})),
            (2, "after", demo_time.DemoRun("this checkout", 45.0, phases, {"vpp @ PKR 0.4": 21.0})),
            (2, "before", demo_time.DemoRun("abc", 50.0, phases, {}))]
    demo_time.print_tables(runs, before=True)
    out = capsys.readouterr().out
    assert "After ÷ before, wall time: median 0.85 (range 0.80–0.90 over 2 pairs)" in out
    assert "  trials: median 0.75 (range 0.50–1.00 over 2 pairs)" in out
    assert "| vpp @ PKR 0.4 | 20.00 | 20.00 | 21.00 | – |" in out


def test_demo_time_reads_the_dense_ap_from_a_row_that_brackets_its_goal():
    leaderboard_ap = _benchmark_module("demo_time").leaderboard_ap
    rows = [{"method": "tps", "goal_pkr": 0.4, "ap_nearest": 30.0, "ap_at_goal": None, "delta_ap_dense": None},
            {"method": "svit", "goal_pkr": 0.55, "ap_nearest": 35.0, "ap_at_goal": 34.5, "delta_ap_dense": -3.5}]
    assert leaderboard_ap(rows) == {"tps @ PKR 0.4": 30.0, "svit @ PKR 0.55": 35.0, "dense": 38.0}
    assert leaderboard_ap(rows[:1])["dense"] is None


def test_demo_time_exports_the_tracked_files_of_a_commit(tmp_path):
    demo_time = _benchmark_module("demo_time")
    code = demo_time.export_commit(demo_time.commit_of("HEAD"), tmp_path / "code")
    assert (code / "prunebench" / "platform" / "cli.py").is_file() and not (code / ".git").exists()


@pytest.mark.parametrize("args, message", [
    (["--before", "no-such-commit"], "--before no-such-commit: allowed: a commit of this repository"),
    (["--set", "finetune.steps=-1"], "--set finetune.steps=-1: finetune.steps must be an integer >= 0"),
    (["--repeats", "0"], "--repeats 0: allowed: 1 or more"),
])
def test_demo_time_refuses_bad_input_in_one_line_before_running(args, message):
    done = _call("demo_time.py", *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
