"""Method parameters that aim at a goal PKR (the paper's 55 % and 40 % settings).

- DynamicViT / TPS: ρ = 0.6 and 0.4 give PKR 0.544 / 0.406 with pruning before blocks 3, 6, 9
  (exactly VPP Table 2's baselines; methods.md §0.5).
- VPP: the official configs, κ = 0.7, q = 0.8 (55 %) and κ = 0.6, q = 0.7 (40 %; methods.md §1.7).
- SViT: the three-level schedule q, q², q³ over blocks 3..11 solving (3 + 3(q + q² + q³))/12 = P,
  q ≈ 0.607 (55 %) and 0.39 (40 %); the authors' values are unpublished (methods.md §2.7).
"""

from __future__ import annotations

from typing import Any

from prunebench.errors import ConfigError

PKR_TARGETS = (0.55, 0.40)

_PRESETS: dict[str, dict[float, dict[str, Any]]] = {
    "vpp": {0.55: {"kappa": 0.7, "q": 0.8}, 0.40: {"kappa": 0.6, "q": 0.7}},
    "dynamicvit": {0.55: {"rho": 0.6}, 0.40: {"rho": 0.4}},
    "tps": {0.55: {"rho": 0.6}, 0.40: {"rho": 0.4}},
    "svit": {0.55: {"q": 0.607}, 0.40: {"q": 0.39}},
}


def params_for_target(method: str, target: float) -> dict[str, Any]:
    """Parameters of ``method`` for goal PKR ``target`` (0.55 or 0.40)."""
    if method not in _PRESETS:
        raise ConfigError(f"no PKR preset for method '{method}'; allowed: {', '.join(sorted(_PRESETS))}")
    presets = _PRESETS[method]
    key = next((t for t in presets if abs(t - target) < 1e-9), None)
    if key is None:
        raise ConfigError(f"no {method} preset for target PKR {target}; allowed: {', '.join(str(t) for t in presets)}")
    return dict(presets[key])


def pruning_methods() -> list[str]:
    """Methods that have target presets (every pruning method of the benchmark)."""
    return sorted(_PRESETS)
