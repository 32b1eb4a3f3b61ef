"""Bad datasets, output paths and tracking stores: exit 2, one line on stderr, nothing written.

Each case is named after what it feeds in. Frames are checked from their headers (no pixel decoded)
before anything starts; ``data synth`` refuses a path at or under a file; ``report`` reads only an
existing store that answers now; every file and folder written follows the user's umask.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile
from safetensors.torch import save_file

from prunebench.atomic import write_bytes, write_json
from prunebench.data.synth import SynthSpec, generate
from prunebench.data.ytvis import YTVISDataset
from prunebench.errors import ConfigError
from prunebench.platform.cli import main
from prunebench.platform.stores import check_existing_store
from prunebench.platform.tracking import _keep
from prunebench.training.checkpoint import save_checkpoint

SPEC = SynthSpec(videos=2, valid_videos=1, frames=3, height=32, width=48, seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny synthetic YouTube-VIS folder (2 train videos, 1 valid video, 3 frames of 32x48 each)."""
    root = tmp_path_factory.mktemp("bad-inputs") / "data"
    generate(root, SPEC, workers=1)
    return root


def _copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "data"))


def _edit_split(root: Path, split: str, edit) -> None:
    path = root / "annotations" / f"instances_{split}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _frame(root: Path, video: int = 1, index: int = 2) -> Path:
    """Frame ``index`` of train video ``video`` (file order as in the annotation file)."""
    names = json.loads((root / "annotations" / "instances_train.json").read_text())["videos"][video]["file_names"]
    return root / "train" / "JPEGImages" / names[index]


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _refused(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI in this process: exit 2, exactly one line on stderr, no traceback, each fragment in it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _train_refused(capsys, tmp_path: Path, root: Path, *fragments: str) -> str:
    out = tmp_path / "runs"
    err = _refused(capsys, ["train", "demo", "--set", f"data.root={root}", "--set", f"out={out}"], *fragments)
    assert not out.exists()  # checked before anything starts
    return err


# --- frames: checked from their headers before training ---------------------------------------------


@pytest.mark.parametrize("content", [b"", b"not an image", b"\xff\xd8\xff\xe0\x00"],
                         ids=["empty-file", "text", "cut-jpeg-header"])
def test_frame_that_is_not_an_image_exits_2(dataset, tmp_path, capsys, content):
    root = _copy(dataset, tmp_path)
    frame = _frame(root)
    frame.write_bytes(content)
    _train_refused(capsys, tmp_path, root, "instances_train.json: video 2 frame 2", f"file {frame} is not an image")


def test_frame_of_wrong_size_exits_2(dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)
    frame = _frame(root)
    Image.new("RGB", (40, 30)).save(frame, format="JPEG")
    _train_refused(capsys, tmp_path, root, "video 2 frame 2", f"file {frame} is 30x40 (height x width), "
                   "not the video's 32x48")


def test_frame_that_is_a_folder_exits_2(dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)
    frame = _frame(root)
    frame.unlink()
    frame.mkdir()
    _train_refused(capsys, tmp_path, root, "video 2 frame 2", f"file {frame} cannot be read as an image")


def test_video_length_disagreeing_with_file_names_exits_2(dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)
    _edit_split(root, "train", lambda data: data["videos"][0].update(length=7))
    _train_refused(capsys, tmp_path, root, "video 1: length 7 disagrees with its 3 file_names")


def test_frame_headers_are_read_without_decoding_pixels(dataset, monkeypatch):
    def decode(self):
        raise AssertionError("a frame's pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    assert sum(len(video) for video in YTVISDataset(dataset, "train").videos) == 6


def test_thousands_of_frames_are_checked_in_seconds(dataset, tmp_path):
    """3,000 frames (100 videos of 30) pass the header check in less than 3 s of CPU time."""
    jpeg = (dataset / "train" / "JPEGImages" / "train_0000" / "00000.jpg").read_bytes()
    videos = []
    for v in range(100):
        folder = tmp_path / "many" / "train" / "JPEGImages" / f"v{v:03d}"
        folder.mkdir(parents=True)
        for t in range(30):
            (folder / f"{t:05d}.jpg").write_bytes(jpeg)
        videos.append({"id": v + 1, "height": 32, "width": 48, "length": 30,
                       "file_names": [f"v{v:03d}/{t:05d}.jpg" for t in range(30)]})
    (tmp_path / "many" / "annotations").mkdir()
    (tmp_path / "many" / "annotations" / "instances_train.json").write_text(
        json.dumps({"videos": videos, "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    tic = time.process_time()  # CPU time: the machine may be busy with other work
    frames = sum(len(video) for video in YTVISDataset(tmp_path / "many", "train").videos)
    assert frames == 3000 and time.process_time() - tic < 3.0


# --- splits a command needs must not be empty ---------------------------------------------------------


def _empty(data: dict) -> None:
    data.update(videos=[], annotations=[])


def test_empty_train_split_exits_2(dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)
    _edit_split(root, "train", _empty)
    _train_refused(capsys, tmp_path, root, f"data.train_split 'train' of {root} is empty")


def _fake_checkpoint(path: Path) -> Path:
    """A file that reads as a dense vit_tiny prunebench checkpoint (the split is checked before its weights)."""
    meta = {"method": "dense", "params": {}, "config": {"model": {"backbone": "vit_tiny"}}}
    save_file({"unused": torch.zeros(1)}, str(path), metadata={"prunebench": json.dumps(meta)})
    return path


@pytest.mark.parametrize("command", ["eval", "bench", "benchmark"])
def test_empty_valid_split_exits_2(dataset, tmp_path, capsys, command):
    root = _copy(dataset, tmp_path)
    _edit_split(root, "valid", _empty)
    out = tmp_path / "runs"
    preset = "benchmark-tiny" if command == "benchmark" else "demo"
    argv = [command, preset, "--set", f"data.root={root}", "--set", f"out={out}"]
    if command == "eval":
        argv += ["--checkpoint", str(_fake_checkpoint(tmp_path / "dense.safetensors")), "--no-timing"]
    _refused(capsys, argv, f"data.valid_split 'valid' of {root} is empty")
    assert not out.exists()


# --- data synth onto or under a file ------------------------------------------------------------------


def test_synth_onto_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    _refused(capsys, ["data", "synth", str(target), "--videos", "1"], f"{target}: is a file, not a folder")
    assert _listing(tmp_path) == {"file.txt"} and target.read_text() == "keep me"


def test_synth_under_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("keep me")
    target = tmp_path / "file.txt" / "data"
    _refused(capsys, ["data", "synth", str(target), "--videos", "1"], f"{tmp_path / 'file.txt'} is a file, not a folder")
    assert _listing(tmp_path) == {"file.txt"}


# --- report: only an existing store that answers --------------------------------------------------------


def _report_refused(capsys, tmp_path: Path, uri: str, *fragments: str) -> None:
    before = _listing(tmp_path)
    _refused(capsys, ["report", "--out", str(tmp_path / "report"), "--tracking-uri", uri], *fragments)
    assert _listing(tmp_path) == before


def test_report_unknown_uri_scheme_exits_2(tmp_path, capsys):
    _report_refused(capsys, tmp_path, "foo://bar", "--tracking-uri foo://bar: unknown URI scheme 'foo'")


def test_report_host_without_scheme_exits_2(tmp_path, capsys):
    _report_refused(capsys, tmp_path, "localhost:5000", "unknown URI scheme 'localhost'")


def test_report_missing_sqlite_creates_nothing(tmp_path, capsys):
    db = tmp_path / "mistyped.db"
    _report_refused(capsys, tmp_path, f"sqlite:///{db}", f"no such file {db}")
    assert not db.exists()


@pytest.mark.parametrize("content", [b"", b"not a database at all, but long enough to be read" * 4],
                         ids=["empty-file", "text-file"])
def test_report_sqlite_file_that_is_not_a_store_exits_2(tmp_path, capsys, content):
    db = tmp_path / "mlflow.db"
    db.write_bytes(content)
    _report_refused(capsys, tmp_path, f"sqlite:///{db}", str(db))
    assert db.read_bytes() == content


def test_report_missing_store_folder_creates_nothing(tmp_path, capsys):
    folder = tmp_path / "mlruns"
    _report_refused(capsys, tmp_path, str(folder), f"{folder} is not an MLflow store folder")
    assert not folder.exists()


def test_report_out_under_a_file_exits_2(tmp_path, capsys):
    import sqlite3

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as connection:  # passes the store check; the bad --out stops first
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    (tmp_path / "file.txt").write_text("")
    before = _listing(tmp_path)
    _refused(capsys, ["report", "--out", str(tmp_path / "file.txt" / "r"), "--tracking-uri", f"sqlite:///{db}"],
             f"--out {tmp_path / 'file.txt' / 'r'}: {tmp_path / 'file.txt'} is a file")
    assert _listing(tmp_path) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _unreachable_port(kind: str) -> Iterator[int]:
    """A local port that refuses connections, or (``silent``) one that accepts them and never answers."""
    with socket.socket() as listener:
        if kind == "silent":
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            yield listener.getsockname()[1]
        else:
            yield _free_port()


@pytest.mark.parametrize("server, fragment", [("refusing", "Connection refused"), ("silent", "no answer within 10 s")])
def test_report_unreachable_server_exits_2_within_30s(tmp_path, capsys, server, fragment):
    with _unreachable_port(server) as port:
        tic = time.monotonic()
        _report_refused(capsys, tmp_path, f"http://127.0.0.1:{port}", "the tracking server is unreachable", fragment)
        assert time.monotonic() - tic < 30


def test_report_unreachable_server_in_a_fresh_interpreter(tmp_path):
    """The user's view: a real process, its whole stderr one line, no traceback, nothing written."""
    with _unreachable_port("refusing") as port:
        done = subprocess.run([sys.executable, "-m", "prunebench.platform.cli", "report", "--out",
                               str(tmp_path / "report"), "--tracking-uri", f"http://127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "the tracking server is unreachable" in done.stderr and not (tmp_path / "report").exists()


class _Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("status, fragment", [(200, None), (401, None), (404, "is not an MLflow tracking server"),
                                              (503, "answers with a server error")])
def test_tracking_server_answer_to_the_probe(status, fragment):
    handler = type("Handler", (_Answer,), {"status": status})
    with HTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            if fragment is None:
                check_existing_store(uri, "--tracking-uri")
            else:
                with pytest.raises(ConfigError, match=fragment):
                    check_existing_store(uri, "--tracking-uri")
        finally:
            server.shutdown()


# --- permissions: the user's umask ---------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o077], ids=["umask-022", "umask-077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_outputs_follow_the_umask(tmp_path, capsys, umask):
    assert main(["data", "synth", str(tmp_path / "data"), "--videos", "2", "--valid-videos", "1", "--frames", "2",
                 "--height", "32", "--width", "48", "--workers", "1"]) == 0
    assert main(["data", "split", str(tmp_path / "data"), "--valid-videos", "1"]) == 0
    write_json(tmp_path / "out" / "new" / "metrics.json", {"AP": 1.0})
    write_bytes(tmp_path / "out" / "config.yaml", b"seed: 0\n")
    save_checkpoint(tmp_path / "out" / "model.safetensors", torch.nn.Linear(2, 2), {"method": "dense"})
    _keep(tmp_path / "out" / "config.yaml", tmp_path / "inputs" / "fetched")  # how a checked --from download is kept
    assert (tmp_path / "inputs" / "fetched" / "config.yaml").read_bytes() == b"seed: 0\n"
    capsys.readouterr()
    paths = [p for p in tmp_path.rglob("*")]
    assert len(paths) > 20
    for path in paths:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"
