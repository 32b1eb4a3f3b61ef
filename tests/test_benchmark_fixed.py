"""``benchmark.fixed``: parameters a method holds at every keep setting of the benchmark grid (and at both presets
of the demo); the CPU presets' grids."""

import pytest

from prunebench.config import load_config
from prunebench.errors import ConfigError
from prunebench.models.presets import implied_pkr, params_for_pkr
from prunebench.platform.benchmark_grid import check_benchmark, demo_specs


def _specs(overrides):
    return check_benchmark(load_config("benchmark-tiny", overrides))


def test_fixed_parameters_reach_every_setting_and_seed_of_their_method_only():
    specs = _specs({"benchmark.fixed": {"dynamicvit": {"ratio_weight": 20.0, "positions": [2, 5, 8]}}})
    dynamicvit = [s for s in specs if s.method == "dynamicvit"]
    assert dynamicvit and all(s.params["ratio_weight"] == 20.0 and s.params["positions"] == [2, 5, 8]
                              for s in dynamicvit)
    assert all("ratio_weight" not in s.params for s in specs if s.method != "dynamicvit")
    # a fixed method outside the grid (a variant of a preset may leave it out) is not an error
    assert len(_specs({"benchmark.fixed": {"svit": {"ratio_weight": 8.0}}})) == len(specs)
    # the keep level is solved with the fixed positions in place: each setting still implies its PKR
    settings = load_config("benchmark-tiny").benchmark.settings
    implied = sorted({round(implied_pkr("dynamicvit", s.params), 3) for s in dynamicvit})
    assert implied == pytest.approx(sorted(settings), abs=1e-3)


def test_the_demo_holds_fixed_parameters_beside_its_presets():
    plain = {s.label: s.params for s in demo_specs(load_config("demo"))}
    fixed = {s.label: s.params for s in demo_specs(load_config("demo", {"benchmark.fixed": {"tps": {"ratio_weight": 80.0}}}))}
    assert set(fixed) == set(plain) and len(plain) == 8
    for name, params in fixed.items():
        expected = {**plain[name], "ratio_weight": 80.0} if name.startswith("tps-") else plain[name]
        assert params == expected, name
    with pytest.raises(ConfigError, match=r"^tps: rho set the keep level and cannot be held fixed; allowed: "):
        demo_specs(load_config("demo", {"benchmark.fixed": {"tps": {"rho": 0.5}}}))
    with pytest.raises(ConfigError, match=r"^benchmark\.fixed: unknown method 'tsp'; allowed: "):
        demo_specs(load_config("demo", {"benchmark.fixed": {"tsp": {"ratio_weight": 80.0}}}))
    with pytest.raises(ConfigError, match=r"^tps: ratio_weight=-1\.0"):
        demo_specs(load_config("demo", {"benchmark.fixed": {"tps": {"ratio_weight": -1.0}}}))


def test_a_fixed_keep_level_parameter_is_refused():
    with pytest.raises(ConfigError, match=r"^dynamicvit: rho set the keep level and cannot be held fixed"):
        params_for_pkr("dynamicvit", 0.5, base={"rho": 0.3})


@pytest.mark.parametrize(("fixed", "message"), [
    ({"dynamicvt": {"ratio_weight": 2.0}}, r"^benchmark\.fixed: unknown method 'dynamicvt'; allowed: "),
    ({"dynamicvit": {"ratio_weigth": 2.0}}, r"^dynamicvit: unknown key .ratio_weigth.; allowed: "),
    ({"dynamicvit": {"ratio_weight": -1.0}}, r"^dynamicvit: ratio_weight=-1\.0"),
])
def test_bad_fixed_parameters_fail_in_one_line(fixed, message):
    with pytest.raises(ConfigError, match=message) as error:
        _specs({"benchmark.fixed": fixed})
    assert "\n" not in str(error.value)


def test_fixed_and_explicit_parameter_sets_of_one_method_are_refused():
    overrides = {"benchmark.fixed": {"dynamicvit": {"ratio_weight": 20.0}},
                 "benchmark.params": {"dynamicvit": [{"rho": 0.5}]}}
    with pytest.raises(ConfigError, match=r"^benchmark\.fixed\.dynamicvit: dynamicvit also has explicit "):
        _specs(overrides)


@pytest.mark.parametrize("preset", ["benchmark-cpu", "benchmark-cpu-adapter"])
def test_cpu_presets_weight_the_ratio_losses_for_this_task_loss(preset):
    specs = check_benchmark(load_config(preset))
    weights: dict[str, set[float]] = {}
    for spec in specs:
        if spec.method in ("dynamicvit", "tps", "svit"):
            weights.setdefault(spec.method, set()).add(spec.params.get("ratio_weight"))
    expected = {"dynamicvit": {20.0}, "tps": {80.0}, "svit": {20.0}}
    assert "dynamicvit" in weights and weights == {method: expected[method] for method in weights}


@pytest.mark.parametrize(
    "preset, methods, evit_pkrs",
    [
        ("benchmark-cpu-merging", {"evit", "tome", "random"}, [0.36, 0.50, 0.70]),
        ("paper-tiny", {"vpp", "dynamicvit", "tps", "svit", "evit", "tome", "random", "oracle"}, [0.36, 0.47, 0.62]),
    ],
)
def test_presets_with_merging_methods_bracket_both_goals(preset, methods, evit_pkrs):
    config = load_config(preset)
    specs = check_benchmark(config)
    assert {spec.method for spec in specs} == methods
    for method in ("evit", "tome"):
        pkrs = {round(implied_pkr(method, spec.params), 2) for spec in specs if spec.method == method}
        for goal in config.benchmark.goals:
            assert min(pkrs) < goal < max(pkrs), (method, sorted(pkrs), goal)
    evit = sorted(round(implied_pkr("evit", spec.params), 2) for spec in specs if spec.method == "evit" and spec.seed == 0)
    assert evit == evit_pkrs
