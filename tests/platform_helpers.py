"""Shared set-up for the platform tests: a tiny experiment config and subprocess runners."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

import yaml

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"synth": {"videos": 2, "valid_videos": 1, "frames": 4, "height": 64, "width": 96, "seed": 0}},
    "model": {"backbone": "vit_tiny", "head": {"num_queries": 4, "hidden_dim": 32, "decoder_layers": 1,
                                               "pixel_decoder_layers": 1, "heads": 2, "feedforward_dim": 64,
                                               "train_points": 256}},
    "train": {"steps": 3, "batch_size": 2, "lr": 1e-4, "backbone_lr_mult": 1.0, "clip_norm": 1.0, "log_every": 1},
    "finetune": {"steps": 2, "batch_size": 2, "lr": 1e-4, "clip_norm": 1.0, "log_every": 1},
    "eval": {"timing_frames": 3, "warmup_frames": 1, "threads": 1},
}

#: command-line ``--set`` overrides that shrink the demo preset to TINY's data, head and stages
TINY_DEMO_ARGS = [arg for item in (
    f"data.synth={json.dumps(TINY['data']['synth'])}", f"model.head={json.dumps(TINY['model']['head'])}",
    *(f"{stage}.{key}={TINY[stage][key]}" for stage, key in (
        ("train", "steps"), ("train", "batch_size"), ("finetune", "steps"),
        ("eval", "timing_frames"), ("eval", "warmup_frames")))) for arg in ("--set", item)]


def write_config(root: Path, **sections) -> Path:
    """A tiny config under ``root`` (data in root/data, outputs in root/runs)."""
    config = {**TINY, "out": str(root / "runs"), "data": {**TINY["data"], "root": str(root / "data")}}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(args, env=None, timeout=600, check=True, **popen):
    """Run ``prunebench ARGS`` in a fresh interpreter; return the parsed JSON (or the process)."""
    done = subprocess.run([sys.executable, "-m", "prunebench.platform.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, **popen)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)
    return done


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_started(tag: str, before: set[int]) -> None:
    """Kill the Ray processes started by this test (those mentioning ``tag`` or new since ``before``)."""
    victims = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if proc.info["pid"] not in before and ("ray" in cmd or tag in cmd) and proc.info["pid"] != os.getpid():
            victims.append(proc)
    for proc in victims:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(victims, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def stop_tagged(tags: Iterable[str], roots: Iterable[int] = ()) -> None:
    """Stop what a test started and nothing else: the processes whose command line mentions one of ``tags``
    (e.g. a Ray node's own temp folder), the processes ``roots``, and every descendant of those (Ray workers
    and job drivers, a server's workers); SIGTERM first, SIGKILL after 15 s."""
    tags, roots = [str(t) for t in tags], set(roots)
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] in roots or any(tag in cmd for tag in tags):
            found[proc.pid] = proc
    for proc in list(found.values()):
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            pass
    found.pop(os.getpid(), None)
    for proc in found.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(found.values()), timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def kill_driver_when(args: list[str], ready: Callable[[], bool], env: dict[str, str] | None = None,
                     timeout: float = 400) -> None:
    """Start ``prunebench ARGS`` in its own session; SIGKILL it (and the local Ray it started) once ``ready()``."""
    driver = subprocess.Popen([sys.executable, "-m", "prunebench.platform.cli", *map(str, args)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, **(env or {})})
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None and not ready():
        time.sleep(2)
    assert driver.poll() is None, "the driver finished before it could be interrupted"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(3)
