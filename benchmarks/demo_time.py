"""The demo's wall time, phase by phase, for this checkout and (``--before``) another commit, in one run.

    python benchmarks/demo_time.py [--before REF] [--repeats 1] [--set KEY=VALUE ...] [--logs DIR]

Each run is ``prunebench demo --json`` as a user starts it on a fresh machine: a new output folder (so the
synthetic data are generated) and an empty dense-model cache (``$PRUNEBENCH_CACHE``, so the dense model is
trained), in a process of its own. ``--before REF`` runs the same command on the code of commit ``REF``
(its tracked files, exported with ``git archive``; same Python environment) as well: the two alternate,
``--repeats`` pairs (before first, then after first, ...), and each pair gives after ÷ before. ``--set``
overrides go to every run (the demo's forms: ``finetune.steps``, ``precision``, ``benchmark.fixed``, ...).
The demos' output folders are temporary: what this script reports is its tables (``--logs`` keeps each run's log).

Phases come from the demo's own progress lines ``[1/4]`` .. ``[4/4]``, timed as they arrive: data (the
process's start, imports and the synthetic data), Ray + dense stage, trials (fine-tunes and evaluations),
timing + report, exit. A second table lists the dense model's AP and every leaderboard row's per run: a speed comparison holds
only where both codes compute the same demo.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ratios import ratio_summary

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("data", "Ray + dense", "trials", "timing + report", "exit")
PROGRESS = re.compile(r"\[([1-4])/4\]")


@dataclass
class DemoRun:
    """One timed demo: its code's label, wall seconds, seconds per phase and its APs (``leaderboard_ap``)."""

    code: str
    wall: float
    phases: dict[str, float]
    ap: dict[str, float | None] = field(default_factory=dict)


def commit_of(ref: str) -> str:
    """The full hash of ``ref`` in this repository; ValueError (one line) if it names no commit."""
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"--before {ref}: allowed: a commit of this repository (git rev-parse found none)")
    return done.stdout.strip()


def export_commit(commit: str, folder: Path) -> Path:
    """The tracked files of ``commit`` written to ``folder`` (no change to this repository's worktrees)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def check_overrides(sets: list[str]) -> None:
    """Validate ``--set`` against the demo preset of this checkout before anything runs (ValueError: one line)."""
    sys.path.insert(0, str(ROOT))
    from prunebench.config import load_config
    from prunebench.errors import ConfigError
    from prunebench.platform.cli import parse_assignments

    try:
        load_config("demo", {"out": "demo-time-check", **parse_assignments(sets)})
    except ConfigError as error:
        raise ValueError(str(error)) from None


def time_demo(code: Path, label: str, sets: list[str], folder: Path, log: Path | None) -> DemoRun:
    """Run the demo of the code in ``code`` from an empty output folder and dense cache under ``folder``."""
    command = [sys.executable, "-m", "prunebench.platform.cli", "demo", "--out", str(folder / "out"), "--json",
               *[arg for item in sets for arg in ("--set", item)]]
    env = {**os.environ, "PRUNEBENCH_CACHE": str(folder / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)  # the code is the working directory's, nothing else
    marks: dict[int, float] = {}
    tail: deque[str] = deque(maxlen=30)
    begin = time.perf_counter()
    process = subprocess.Popen(command, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def read_stderr() -> None:
        with open(log or os.devnull, "w", buffering=1) as sink:  # line by line: a long run can be followed
            for line in process.stderr:
                found = PROGRESS.search(line)
                if found and "prunebench" in line:
                    marks.setdefault(int(found.group(1)), time.perf_counter())
                tail.append(line)
                sink.write(line)

    reader = threading.Thread(target=read_stderr)
    reader.start()
    stdout = process.stdout.read()
    process.wait()
    reader.join()
    end = time.perf_counter()
    if process.returncode != 0:
        raise RuntimeError(f"the demo of {label} failed (exit {process.returncode}):\n{''.join(tail)}")
    result = json.loads(stdout)
    points = [begin, *(marks.get(i) for i in range(1, 5)), end]
    phases = {name: b - a for name, a, b in zip(PHASES, points, points[1:]) if a is not None and b is not None}
    return DemoRun(label, end - begin, phases, leaderboard_ap(result["leaderboard"]))


def leaderboard_ap(rows: list[dict]) -> dict[str, float | None]:
    """AP nearest the goal per leaderboard row (``method @ PKR goal``), and the dense model's AP (``dense``), which
    a row bracketing its goal gives as its AP at the goal minus its ΔAP to dense (None where no row does)."""
    ap = {f"{row.get('method')} @ PKR {row.get('goal_pkr')}": row.get("ap_nearest") for row in rows}
    ap["dense"] = next((row["ap_at_goal"] - row["delta_ap_dense"] for row in rows
                        if row.get("ap_at_goal") is not None and row.get("delta_ap_dense") is not None), None)
    return ap


def print_tables(runs: list[tuple[int, str, DemoRun]], before: bool) -> None:
    """Wall time and phases per run; after ÷ before per pair; AP per leaderboard row and run."""
    print("\n| pair | run | code | wall s | " + " | ".join(f"{p} s" for p in PHASES) + " |")
    print("|---:|---|---|---:|" + "---:|" * len(PHASES))
    for pair, role, run in runs:
        cells = " | ".join(f"{run.phases[p]:.0f}" if p in run.phases else "–" for p in PHASES)
        print(f"| {pair} | {role} | {run.code} | {run.wall:.1f} | {cells} |")
    if before:
        pairs = sorted({pair for pair, _, _ in runs})
        by = {(pair, role): run for pair, role, run in runs}
        ratios = [by[(p, "after")].wall / by[(p, "before")].wall for p in pairs]
        print(f"\nAfter ÷ before, wall time: {ratio_summary(ratios)}")
        for phase in PHASES:
            if all(phase in by[(p, role)].phases for p in pairs for role in ("before", "after")):
                phase_ratios = [by[(p, "after")].phases[phase] / by[(p, "before")].phases[phase] for p in pairs]
                print(f"  {phase}: {ratio_summary(phase_ratios)}")
    rows = sorted({key for _, _, run in runs for key in run.ap})
    print("\n| AP of: the dense model, a leaderboard row (its run nearest the goal) | "
          + " | ".join(f"pair {pair} {role}" for pair, role, _ in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for key in rows:
        cells = " | ".join("–" if run.ap.get(key) is None else f"{run.ap[key]:.2f}" for _, _, run in runs)
        print(f"| {key} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REF", help="also time the demo of this commit, alternating with this checkout")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each code (pairs with --before)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a demo override, given to every run (repeatable)")
    parser.add_argument("--logs", type=Path, help="write each run's log (stderr) to this folder")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: allowed: 1 or more")
    try:
        commit = commit_of(args.before) if args.before else None
        check_overrides(args.sets)
    except ValueError as error:
        parser.error(str(error))
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo-time-") as tmp:
        codes = {"after": (ROOT, "this checkout")}
        if commit:
            codes["before"] = (export_commit(commit, Path(tmp) / "before-code"), commit[:10])
        runs = []
        for pair in range(1, args.repeats + 1):
            order = ["before", "after"] if commit else ["after"]
            if pair % 2 == 0:
                order.reverse()
            for role in order:
                code, label = codes[role]
                name = f"pair{pair}-{role}"
                log = args.logs / f"{name}.log" if args.logs else None
                try:
                    run = time_demo(code, label, args.sets, Path(tmp) / name, log)
                except RuntimeError as error:
                    sys.exit(str(error))
                print(f"{name}: {run.wall:.1f} s", file=sys.stderr, flush=True)
                runs.append((pair, role, run))
    print(f"\nprunebench demo {' '.join(f'--set {s}' for s in args.sets)}".rstrip()
          + f": fresh output folder and dense cache per run; {os.cpu_count()} CPUs")
    print_tables(runs, commit is not None)


if __name__ == "__main__":
    main()
