"""Progress of long work (a bar on a terminal, log lines elsewhere) and the CLI's -q / -v log levels."""

import logging
import sys

from platform_helpers import cli
from prunebench.progress import Progress, duration

LOGGER = logging.getLogger("prunebench.test")


def test_lines_with_count_and_eta_when_stderr_is_not_a_terminal(caplog, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    caplog.set_level(logging.INFO, logger="prunebench")
    with Progress("synth", 3, "videos", interval=0.0, logger=LOGGER) as progress:
        progress.update()
        progress.report("loss 0.5")
        progress.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[0].startswith("synth 1/3 videos (") and "ETA" in lines[0]
    assert lines[1].startswith("synth 1/3 videos, loss 0.5 (") and lines[2].startswith("synth 3/3 videos (")


def test_training_progress_logs_only_its_reports(caplog, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    caplog.set_level(logging.INFO, logger="prunebench")
    with Progress("train dense", 4, "steps", interval=None, initial=1, logger=LOGGER) as progress:
        progress.update(3)
        progress.report("loss 0.1")
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["train dense 4/4 steps, loss 0.1"]


def test_a_bar_and_no_lines_on_a_terminal(caplog, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    caplog.set_level(logging.INFO, logger="prunebench")
    with Progress("eval", 2, "frames", interval=0.0, logger=LOGGER) as progress:
        progress.update(2)
    assert not caplog.records
    assert "eval" in capsys.readouterr().err  # tqdm drew on stderr


def test_no_bar_and_no_lines_when_info_is_off(caplog, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    caplog.set_level(logging.WARNING, logger="prunebench")
    with Progress("eval", 2, "frames", interval=0.0, logger=LOGGER) as progress:
        progress.update(2)
    assert not caplog.records and capsys.readouterr().err == ""


def test_duration_words():
    assert [duration(s) for s in (4.2, 65, 3725)] == ["4s", "1m05s", "1h02m05s"]


def test_default_level_logs_progress_and_quiet_does_not(tmp_path):
    args = ["data", "synth", "--videos", "2", "--valid-videos", "1", "--frames", "2", "--height", "64", "--width", "96",
            "--workers", "1", "--json"]
    shown = cli([*args, tmp_path / "a"], check=False)
    assert shown.returncode == 0 and "INFO prunebench.data.synth: data synth 3/3 videos" in shown.stderr
    quiet = cli(["-q", *args, tmp_path / "b"], check=False)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_verbose_shows_debug_lines_and_quiet_still_the_error():
    args = ["flops", "--backbone", "vit_tiny", "--method", "svit"]  # checked, then refused: svit needs --data
    verbose = cli(["-v", *args], check=False)
    assert verbose.returncode == 2
    assert "DEBUG prunebench.platform.preflight: checked: backbone vit_tiny, method svit {}" in verbose.stderr
    quiet = cli(["-q", *args], check=False)
    assert quiet.returncode == 2 and quiet.stderr.count("\n") == 1 and "--data" in quiet.stderr
