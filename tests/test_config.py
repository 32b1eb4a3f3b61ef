"""Config loading: relative paths are pinned to the loading process's working directory."""

from prunebench.config import load_config
from prunebench.typed import to_dict


def test_relative_paths_become_absolute_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config("demo", {"out": "runs/demo", "data.root": "runs/data", "model.pretrained": "vit.safetensors"})
    assert config.out == str(tmp_path / "runs" / "demo")
    assert config.data.root == str(tmp_path / "runs" / "data")
    assert config.model.pretrained == str(tmp_path / "vit.safetensors")
    # a Tune trial reloads the driver's config in its own trial folder: same files
    trial_dir = tmp_path / "ray_results" / "trial_0"
    trial_dir.mkdir(parents=True)
    monkeypatch.chdir(trial_dir)
    assert load_config(to_dict(config)) == config
