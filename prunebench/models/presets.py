"""Method parameters that aim at a goal PKR: the paper's 55 % and 40 % settings, and any PKR in between.

- DynamicViT / TPS: ρ = 0.6 and 0.4 give PKR 0.544 / 0.406 with pruning before blocks 3, 6, 9
  (exactly VPP Table 2's baselines; docs/methods.md §1.4).
- VPP: the official configs, κ = 0.7, q = 0.8 (55 %) and κ = 0.6, q = 0.7 (40 %; docs/methods.md §2.7).
- SViT: the three-level schedule q, q², q³ over blocks 3..11 solving (3 + 3(q + q² + q³))/12 = P,
  q ≈ 0.607 (55 %) and 0.39 (40 %); the authors' values are unpublished (docs/methods.md §3.5).

EViT and ToMe have no published settings at these goals; they join the benchmark's grid through their
keep families (``params_for_pkr``): EViT moves κ (implied PKR (4 + 3κ + 3κ² + 2κ³)/12 at positions
3, 6, 9), ToMe moves ``rate``, the fraction of the grid merged per block (docs/methods.md §7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scipy.optimize import brentq

from prunebench.baselines.tome import MAX_RATE
from prunebench.errors import ConfigError
from prunebench.models.registry import build_method, method_class

PKR_TARGETS = (0.55, 0.40)

_PRESETS: dict[str, dict[float, dict[str, Any]]] = {
    "vpp": {0.55: {"kappa": 0.7, "q": 0.8}, 0.40: {"kappa": 0.6, "q": 0.7}},
    "dynamicvit": {0.55: {"rho": 0.6}, 0.40: {"rho": 0.4}},
    "tps": {0.55: {"rho": 0.6}, 0.40: {"rho": 0.4}},
    "svit": {0.55: {"q": 0.607}, 0.40: {"q": 0.39}},
}


def _refuse_keep_level(method: str, base: dict[str, Any], keep_level: dict[str, Any]) -> None:
    """One line if fixed parameters ``base`` name any of the parameters that set ``method``'s keep level."""
    moved = sorted(set(base) & set(keep_level))
    if moved:
        raise ConfigError(f"{method}: {', '.join(moved)} set the keep level and cannot be held fixed; "
                          "allowed: the method's other parameters")


def params_for_target(method: str, target: float, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parameters of ``method`` for goal PKR ``target`` (0.55 or 0.40), added to fixed parameters ``base``."""
    if method not in _PRESETS:
        raise ConfigError(f"no PKR preset for method '{method}'; allowed: {', '.join(sorted(_PRESETS))}")
    presets = _PRESETS[method]
    key = next((t for t in presets if abs(t - target) < 1e-9), None)
    if key is None:
        raise ConfigError(f"no {method} preset for target PKR {target}; allowed: {', '.join(str(t) for t in presets)}")
    base = dict(base or {})
    _refuse_keep_level(method, base, presets[key])
    return {**base, **presets[key]}


def pruning_methods() -> list[str]:
    """Methods that have target presets (every pruning method of the benchmark)."""
    return sorted(_PRESETS)


#: the one-dimensional family of parameters along which each method's keep level moves, and its range.
#: VPP moves on the line through the two official configurations, (κ 0.7, q 0.8) and (κ 0.6, q 0.7);
#: ToMe's merge rate falls as the level rises (level 0.5: no merging).
_FAMILIES: dict[str, tuple[Callable[[float], dict[str, Any]], float, float]] = {
    "dynamicvit": (lambda x: {"rho": x}, 0.05, 1.0),
    "tps": (lambda x: {"rho": x}, 0.05, 1.0),
    "random": (lambda x: {"rho": x}, 0.05, 1.0),
    "oracle": (lambda x: {"rho": x}, 0.05, 1.0),
    "svit": (lambda x: {"q": x}, 0.05, 1.0),
    "vpp": (lambda x: {"kappa": x - 0.1, "q": x}, 0.15, 1.0),
    "evit": (lambda x: {"kappa": x}, 0.05, 1.0),
    "tome": (lambda x: {"rate": MAX_RATE - x}, 0.0, MAX_RATE),
}


def register_family(method: str, family: Callable[[float], dict[str, Any]], low: float, high: float) -> None:
    """Give ``method`` (e.g. a plug-in, from its own module) a keep family for ``params_for_pkr``.

    ``family(x)`` returns the method's parameters at level ``x`` in [low, high]; the PKR they imply
    (``implied_pkr``) must grow with ``x``, so that every PKR between its values at ``low`` and ``high``
    has one setting.
    """
    if not low < high:
        raise ConfigError(f"register_family({method!r}): low={low}, high={high}; allowed: low < high")
    _FAMILIES[method] = (family, low, high)


def implied_pkr(method: str, params: dict[str, Any], depth: int = 12) -> float:
    """PKR (paper Eq. 8) that ``method``'s stage targets imply: the mean over blocks of the cumulative
    keep target in force at each block (1 before the first stage; VPP's dense first frame ignored)."""
    targets = build_method(method, params, dim=8, depth=depth).stage_targets()
    in_force, total = 1.0, 0.0
    for block in range(depth):
        in_force = targets.get(block, in_force)
        total += in_force
    return total / depth


def params_for_pkr(method: str, pkr: float, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parameters of ``method`` whose schedule formula implies PKR ``pkr`` (on the method's family above).

    ``base`` holds fixed parameters (positions, ...) the family's parameters are added to.
    """
    method_class(method)  # a plug-in's module, which registers its family, is imported on its first lookup
    if method not in _FAMILIES:
        raise ConfigError(f"no keep schedule for method '{method}'; allowed: {', '.join(sorted(_FAMILIES))}")
    family, low, high = _FAMILIES[method]
    base = dict(base or {})
    _refuse_keep_level(method, base, family(low))

    def gap(x: float) -> float:
        return implied_pkr(method, {**base, **family(x)}) - pkr

    if not gap(low) <= 0 <= gap(high):
        reach = (implied_pkr(method, {**base, **family(low)}), implied_pkr(method, {**base, **family(high)}))
        raise ConfigError(f"{method}: a setting at PKR {pkr} is out of reach; allowed: {reach[0]:.3f}..{reach[1]:.3f}")
    x = brentq(gap, low, high, xtol=1e-6)
    return {**base, **{k: round(v, 4) for k, v in family(x).items()}}
