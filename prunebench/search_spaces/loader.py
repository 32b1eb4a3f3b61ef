"""Load a method's search space (YAML) and turn it into a Ray Tune / Optuna space.

A space file names a method and, per parameter, one distribution:
``{uniform: [low, high]}``, ``{loguniform: [low, high]}``, ``{randint: [low, high]}`` (high
exclusive) or ``{choice: [v1, v2, ...]}``. Choices that are lists (position sets) are passed to
Tune as strings (Optuna's categoricals must be scalars) and decoded back. Every parameter must be
one of the method's, and every value a space can produce is checked by the method's own
validation at the corners of the ranges, so a bad space fails with one line before any trial runs.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from prunebench.errors import ConfigError
from prunebench.models.params import parse_params
from prunebench.models.registry import method_class
from prunebench.validation_errors import yaml_error_line

SPACES_DIR = Path(__file__).resolve().parent
KINDS = ("uniform", "loguniform", "randint", "choice")


@dataclass(frozen=True)
class Dimension:
    """One searched parameter."""

    name: str
    kind: str
    values: tuple[Any, ...]  # (low, high) or the choices

    def corners(self) -> list[Any]:
        """The extreme values this dimension can produce."""
        if self.kind == "choice":
            return list(self.values)
        low, high = self.values
        return [low, high - 1 if self.kind == "randint" else high]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space for one method."""

    method: str
    dimensions: tuple[Dimension, ...]
    source: str

    def tune_space(self) -> dict[str, Any]:
        """Ray Tune distributions (list choices encoded as JSON strings)."""
        out: dict[str, Any] = {}
        for d in self.dimensions:
            if d.kind == "uniform":
                out[d.name] = tune.uniform(*d.values)
            elif d.kind == "loguniform":
                out[d.name] = tune.loguniform(*d.values)
            elif d.kind == "randint":
                out[d.name] = tune.randint(*d.values)
            else:
                out[d.name] = tune.choice([json.dumps(v) if isinstance(v, list) else v for v in d.values])
        return out

    def corner_params(self) -> list[dict[str, Any]]:
        """The parameter sets at the space's corners: every dimension at one of its extreme values."""
        names = [d.name for d in self.dimensions]
        return [dict(zip(names, corner)) for corner in itertools.product(*(d.corners() for d in self.dimensions))]

    def method_params(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Decode a sampled trial config back into method parameters."""
        params = {}
        for d in self.dimensions:
            value = sampled[d.name]
            params[d.name] = json.loads(value) if d.kind == "choice" and isinstance(value, str) and value.startswith("[") else value
        return params


def space_names() -> list[str]:
    """The search spaces shipped with prunebench."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def _dimension(source: str, name: str, spec: Any) -> Dimension:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{source}: {name}: expected one of {{{', '.join(f'{k}: ...' for k in KINDS)}}}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{source}: {name}: {kind} needs a non-empty list")
    if kind != "choice":
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{source}: {name}: {kind} needs [low, high] numbers, got {values!r}")
        low, high = values
        if not low < high or (kind == "loguniform" and low <= 0):
            allowed = "0 < low < high" if kind == "loguniform" else "low < high"
            raise ConfigError(f"{source}: {name}: invalid range {kind} [{low}, {high}]; allowed: {allowed}")
    return Dimension(name, kind, tuple(values))


def load_space(source: str | Path, depth: int = 12) -> SearchSpace:
    """Read a space by file path or shipped name (``vpp``, ``dynamicvit``, ``tps``, ``svit``, ``evit``, ``tome``)."""
    path = Path(source)
    if not path.exists() and str(source) in space_names():
        path = SPACES_DIR / f"{source}.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{source}: search space not found; shipped: {', '.join(space_names())}") from None
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_line(str(path), error)) from None
    if not isinstance(raw, dict) or "method" not in raw or not isinstance(raw.get("params"), dict):
        raise ConfigError(f"{path}: a search space needs 'method' and a mapping 'params'")
    unknown_top = set(raw) - {"method", "params"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown key '{sorted(unknown_top)[0]}'; allowed: method, params")
    method = raw["method"]
    params_cls = method_class(method).Params
    allowed = list(params_cls.__dataclass_fields__)
    dimensions = []
    for name, spec in raw["params"].items():
        if name not in allowed:
            raise ConfigError(f"{path}: unknown parameter '{name}' for method '{method}'; allowed: {', '.join(allowed)}")
        dimensions.append(_dimension(str(path), name, spec))
    space = SearchSpace(method, tuple(dimensions), str(path))
    for corner in space.corner_params():
        try:
            parse_params(method, params_cls, corner, depth)
        except ConfigError as error:
            raise ConfigError(f"{path}: the space reaches an invalid setting ({error})") from None
    return space
