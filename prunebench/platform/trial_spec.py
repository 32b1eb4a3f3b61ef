"""What a trial runs (``TrialSpec``) and how a sweep names its trials: light enough for the checks that run
before Ray or MLflow start."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray import tune


@dataclass(frozen=True)
class TrialSpec:
    """What one trial fine-tunes, and how MLflow names and tags it.

    Attributes:
        label: unique within a sweep, e.g. ``vpp-p0.47-s1``.
        method, params: the pruning method and its parameters.
        seed: the fine-tuning and evaluation seed.
        tags: extra MLflow tags (``target`` of a demo row, ``setting`` of a benchmark point, ...).
        finetune: False for the dense reference, which is evaluated as it is.
    """

    label: str
    method: str
    params: dict[str, Any]
    seed: int
    tags: dict[str, str] = field(default_factory=dict)
    finetune: bool = True


#: how a sweep turns a Tune trial config into its TrialSpec (a grid label, or sampled parameters)
Describe = Callable[[dict[str, Any]], TrialSpec]


@dataclass(frozen=True)
class GridTrials:
    """A fixed list of trials run as a Tune grid over their labels (demo, benchmark)."""

    specs: tuple[TrialSpec, ...]

    def param_space(self) -> dict[str, Any]:
        """The Tune grid over the labels."""
        return {"trial": tune.grid_search([s.label for s in self.specs])}

    def __call__(self, config: dict[str, Any]) -> TrialSpec:
        return next(s for s in self.specs if s.label == config["trial"])
