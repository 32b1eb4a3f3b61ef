"""A pruning method from outside the package, found through the entry-point group ``prunebench.methods``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunebench.config import load_config
from prunebench.errors import ConfigError
from prunebench.models import presets, registry
from prunebench.models.presets import params_for_pkr
from prunebench.models.registry import build_method, method_names
from prunebench.platform.cli import main

REPO = Path(__file__).resolve().parents[1]
MODULE = "tinynorm_plugin"

PLUGIN = '''"""Keep the tokens of largest norm from one block on: a plug-in pruning method."""

from dataclasses import dataclass

from prunebench.models.params import check_block, check_ratio
from prunebench.models.presets import register_family
from prunebench.models.pruning import PruningMethod, Selection, keep_count, topk_mask
from prunebench.models.registry import register_method


@dataclass(frozen=True)
class NormParams:
    keep: float = 0.5
    position: int = 6

    def validate(self, method, depth):
        check_ratio(method, "keep", self.keep)
        check_block(method, "position", self.position, depth)


@register_method
class NormPruning(PruningMethod):
    name = "tinynorm"
    Params = NormParams

    @property
    def positions(self):
        return (self.params.position,)

    def select(self, position, candidates, ctx):
        count = keep_count(candidates.num_tokens, self.params.keep)
        keep = topk_mask(candidates.tokens.norm(dim=-1), count, candidates.weight)
        return Selection(keep.to(candidates.weight.dtype))

    def stage_targets(self):
        return {self.params.position: self.params.keep}


register_family("tinynorm", lambda x: {"keep": x}, 0.05, 1.0)
'''


def _distribution(folder: Path, name: str, entry: str) -> Path:
    """What ``pip install`` writes for a package whose metadata lists ``entry`` under ``prunebench.methods``."""
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[prunebench.methods]\n{entry}\n")
    return folder


def _isolate_registry(monkeypatch) -> None:
    """Register the built-in methods first, then let the test register into a copy that is dropped afterwards."""
    method_names()
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A folder outside the package holding the plug-in module and its distribution metadata, on sys.path;
    the registry and the keep families are restored afterwards."""
    folder = _distribution(tmp_path / "site", "tinynorm-plugin", f"tinynorm = {MODULE}")
    (folder / f"{MODULE}.py").write_text(PLUGIN)
    _isolate_registry(monkeypatch)
    monkeypatch.setattr(presets, "_FAMILIES", dict(presets._FAMILIES))
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop(MODULE, None)


def test_plugin_method_through_the_cli(plugin_path):
    command = [sys.executable, "-m", "prunebench.platform.cli", "flops", "--backbone", "vit_tiny", "--method", "tinynorm",
               "--set", "keep=0.5", "--img-size", "64", "96", "--json"]
    path = os.pathsep.join(filter(None, [str(plugin_path), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["per_block_tokens"] == [24.0] * 6 + [12.0] * 6  # 4x6 patches, half kept from block 6 on
    assert result["pkr"] == pytest.approx(0.75) and result["gmacs"] < result["gmacs_dense"]


def test_plugin_method_through_build_method_and_keep_family(plugin_path):
    method = build_method("tinynorm", {"keep": 0.25, "position": 3}, dim=192, depth=12)
    assert type(method).__module__ == MODULE and method.stage_targets() == {3: 0.25}
    assert "tinynorm" in method_names()
    with pytest.raises(ConfigError, match=r"tinynorm: keep=1.5 is outside \(0, 1\]"):
        build_method("tinynorm", {"keep": 1.5}, dim=192, depth=12)
    assert params_for_pkr("tinynorm", 0.75)["keep"] == pytest.approx(0.5, abs=1e-3)


def test_plugin_method_params_checked_when_the_config_is_loaded(plugin_path):
    config = load_config({"method": {"name": "tinynorm", "params": {"keep": 0.25}}})
    assert config.method.params == {"keep": 0.25}
    with pytest.raises(ConfigError, match=r"^config: method.params: keep=1.5 is outside \(0, 1\]"):
        load_config({"method": {"name": "tinynorm", "params": {"keep": 1.5}}})
    with pytest.raises(ConfigError, match=r"^config: method.params.position must be an integer, got 'six'$"):
        load_config({"method": {"name": "tinynorm", "params": {"position": "six"}}})
    with pytest.raises(ConfigError, match=r"^config: unknown key 'method.params.rho'; allowed: keep, position$"):
        load_config({"method": {"name": "tinynorm", "params": {"rho": 0.5}}})


def test_plugin_family_is_found_before_any_lookup(plugin_path):
    assert params_for_pkr("tinynorm", 0.75)["keep"] == pytest.approx(0.5, abs=1e-3)


def test_unknown_method_lists_builtins_and_plugins(plugin_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; allowed: .*dense.*tinynorm.*vpp"):
        build_method("nope", {}, dim=192, depth=12)
    assert main(["flops", "--backbone", "vit_tiny", "--method", "nope", "--img-size", "64", "96", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown method 'nope'" in err and "tinynorm" in err


def test_a_broken_plugin_stops_with_one_line(tmp_path, monkeypatch):
    folder = _distribution(tmp_path / "site", "broken-plugin", "broken = broken_plugin_missing")
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(ConfigError, match="plug-in method 'broken' .* cannot be loaded: ModuleNotFoundError") as error:
        build_method("nope", {}, dim=192, depth=12)
    assert "\n" not in str(error.value)


def test_a_taken_name_is_refused(monkeypatch):
    _isolate_registry(monkeypatch)
    vpp = registry.method_class("vpp")
    impostor = type("Impostor", (vpp,), {"name": "vpp"})
    with pytest.raises(ConfigError, match="method name 'vpp' of .*Impostor is taken by prunebench.models.vpp"):
        registry.register_method(impostor)
    assert registry.register_method(vpp) is vpp  # the same class again (a re-imported module) is fine
