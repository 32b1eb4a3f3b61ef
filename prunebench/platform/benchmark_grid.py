"""The benchmark's grid (methods × keep settings × seeds) and every check of it: light enough to run
before Ray or MLflow start."""

from __future__ import annotations


from prunebench.config import ExperimentConfig
from prunebench.errors import ConfigError
from prunebench.models.presets import PKR_TARGETS, params_for_pkr, params_for_target, pruning_methods
from prunebench.models.registry import backbone_spec, build_method, method_class
from prunebench.platform.preflight import check_clips
from prunebench.platform.resources import gpus_per_trial
from prunebench.platform.resume import check_resumable, ray_storage
from prunebench.platform.trial_spec import TrialSpec


def benchmark_specs(config: ExperimentConfig) -> tuple[TrialSpec, ...]:
    """Every trial of the benchmark: method × keep setting × seed (parameters validated)."""
    bench = config.benchmark
    _, dim, _, depth = backbone_spec(config.model.backbone)
    specs = []
    for method in bench.methods:
        explicit = bench.params.get(method)
        if explicit is not None:
            if not isinstance(explicit, list) or not explicit:
                raise ConfigError(f"benchmark.params.{method}: expected a non-empty list of parameter sets")
            settings = [(f"set{i}", dict(p)) for i, p in enumerate(explicit)]
        else:
            fixed = bench.fixed.get(method, {})
            settings = [(f"{pkr:.2f}", params_for_pkr(method, pkr, base=fixed)) for pkr in bench.settings]
        for setting, params in settings:
            # one line naming a bad parameter or clips too short for the method, before anything starts
            check_clips(config, build_method(method, params, dim, depth))
            specs += [TrialSpec(f"{method}-{setting}-s{seed}", method, params, seed,
                                {"setting": setting, "benchmark": config.name}) for seed in bench.seeds]
    return tuple(specs)


def check_fixed_methods(config: ExperimentConfig) -> None:
    """Every method ``benchmark.fixed`` names exists (a preset may fix methods a variant of it leaves out)."""
    for method in config.benchmark.fixed:
        try:
            method_class(method)
        except ConfigError as error:
            raise ConfigError(f"benchmark.fixed: {error}") from None


def demo_specs(config: ExperimentConfig) -> tuple[TrialSpec, ...]:
    """The demo's trials: every pruning method at its preset for each goal PKR, one seed, with the parameters
    ``benchmark.fixed`` holds for the method (a ratio-loss weight, ...; validated: one line naming a bad one)."""
    check_fixed_methods(config)
    _, dim, _, depth = backbone_spec(config.model.backbone)
    specs = []
    for method in pruning_methods():
        for target in PKR_TARGETS:
            params = params_for_target(method, target, base=config.benchmark.fixed.get(method))
            check_clips(config, build_method(method, params, dim, depth))
            specs.append(TrialSpec(f"{method}-{target:.2f}", method, params, config.seed,
                                   {"target": f"{target:.2f}", "setting": f"{target:.2f}"}))
    return tuple(specs)


def check_benchmark(config: ExperimentConfig, resume: bool = False,
                    storage_path: str | None = None) -> tuple[TrialSpec, ...]:
    """Validate the benchmark section (and, with ``resume``, that there is a benchmark to resume in its
    storage); return its trials."""
    bench = config.benchmark
    if not bench.methods or not bench.seeds or not bench.goals:
        raise ConfigError("benchmark: methods, seeds and goals must each name at least one entry")
    check_fixed_methods(config)
    for method in bench.fixed:
        if method in bench.params:
            raise ConfigError(f"benchmark.fixed.{method}: {method} also has explicit benchmark.params; "
                              "allowed: one of the two per method")
    if bench.cpus_per_trial < 1:
        raise ConfigError(f"benchmark.cpus_per_trial={bench.cpus_per_trial}; allowed: an integer >= 1")
    if len(set(bench.seeds)) != len(bench.seeds):
        raise ConfigError(f"benchmark.seeds={list(bench.seeds)} repeats a seed; allowed: distinct seeds")
    for goal in bench.goals:
        if not 0 < goal < 1:
            raise ConfigError(f"benchmark.goals: {goal}; allowed: PKR fractions in (0, 1)")
        if bench.settings and not min(bench.settings) < goal < max(bench.settings):
            raise ConfigError(f"benchmark.settings={list(bench.settings)} do not bracket the goal PKR {goal}; "
                              "allowed: settings on both sides of every goal")
    gpus_per_trial(config, bench.gpus_per_trial)
    specs = benchmark_specs(config)
    if resume:
        check_resumable(ray_storage(config.out, storage_path), config.name)
    return specs


def dense_reference(config: ExperimentConfig) -> TrialSpec:
    """The dense model as a trial of the grid: evaluated as it is, on the cluster like every other model."""
    return TrialSpec("dense", "dense", {}, config.seed, {"setting": "dense"}, finetune=False)
