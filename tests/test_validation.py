"""Every bad configuration exits 2 with one line naming the bad value and what is allowed."""

import subprocess
import sys

import pytest

from prunebench.platform.cli import main


def _fails(capsys, argv, *fragments):
    assert main(["flops", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_keep_ratio_above_one(capsys):
    _fails(capsys, ["--method", "dynamicvit", "--set", "rho=1.5"], "rho=1.5", "(0, 1]")


def test_keep_ratio_zero(capsys):
    _fails(capsys, ["--method", "vpp", "--set", "kappa=0"], "kappa=0", "(0, 1]")


def test_svit_target_outside_range(capsys):
    _fails(capsys, ["--method", "svit", "--set", "positions=[3,6]", "--set", "targets=[0.5,-0.1]"], "-0.1", "(0, 1]")


def test_position_outside_depth(capsys):
    _fails(capsys, ["--method", "dynamicvit", "--set", "positions=[3,6,12]"], "=12", "0..11")


def test_negative_position(capsys):
    _fails(capsys, ["--method", "svit", "--set", "positions=[-1,3]"], "=-1", "0..11")


def test_unsorted_positions(capsys):
    _fails(capsys, ["--method", "tps", "--set", "positions=[6,3,9]"], "[6, 3, 9]", "sorted")


def test_repeated_positions(capsys):
    _fails(capsys, ["--method", "vpp", "--set", "sm_positions=[3,3,9]"], "[3, 3, 9]", "without repeats")


def test_map_sm_at_its_reference_block(capsys):
    _fails(capsys, ["--method", "vpp", "--set", "map_position=5"], "map_position=5", "ref_block=5", "0..4")


def test_map_sm_after_its_reference_block(capsys):
    _fails(capsys, ["--method", "vpp", "--set", "map_position=4", "--set", "ref_block=2",
                    "--set", "sm_positions=[6]"], "map_position=4", "0..1")


def test_sm_before_map_sm(capsys):
    _fails(capsys, ["--method", "vpp", "--set", "sm_positions=[1,6,9]", "--set", "map_position=2"],
           "sm_positions", "3..11")


def test_image_size_not_divisible_by_16(capsys):
    _fails(capsys, ["--img-size", "225", "224"], "225x224", "multiples of 16")


def test_unknown_method(capsys):
    _fails(capsys, ["--method", "evit2"], "'evit2'", "dense, dynamicvit, evit, oracle, random, svit, tome, tps, vpp")


def test_unknown_backbone(capsys):
    _fails(capsys, ["--backbone", "vit_huge"], "'vit_huge'", "vit_small, vit_tiny")


def test_unknown_parameter(capsys):
    _fails(capsys, ["--method", "dynamicvit", "--set", "kappa=0.5"], "'kappa'", "rho, positions")


def test_wrong_type(capsys):
    _fails(capsys, ["--method", "vpp", "--set", "x_ref=both"],
           "vpp: x_ref must be one of 'code', 'paper', got 'both'")


def test_malformed_set(capsys):
    _fails(capsys, ["--method", "vpp", "--set", "kappa"], "PARAM=VALUE", "'kappa'")


def test_image_dependent_method_needs_data(capsys):
    _fails(capsys, ["--method", "svit"], "'svit'", "--data")


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["flops", "--img-size", "224"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_console_script_exit_code():
    done = subprocess.run(
        [sys.executable, "-m", "prunebench.platform.cli", "flops", "--method", "dynamicvit", "--set", "rho=0"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "prunebench flops: error: dynamicvit: rho=0.0 is outside (0, 1]; allowed: a ratio in (0, 1]"
    ]
    assert done.stdout == ""


def test_flops_json_contract(capsys):
    assert main(["flops", "--backbone", "vit_tiny", "--method", "dynamicvit", "--set", "rho=0.6", "--json"]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    for key in ("gmacs", "gmacs_dense", "pkr", "per_block_tokens", "pruner_params"):
        assert key in result
    assert len(result["per_block_tokens"]) == 12
    assert result["gmacs"] < result["gmacs_dense"]


def test_single_frame_clips_refused_only_for_a_space_that_carries_state(tmp_path):
    """``tune`` with ``data.num_ref=0``: a VPP space is refused (its trials would fail in Ray), a space of a
    stateless method is not, nor is VPP's space once every corner drops the Map-SM (no state to carry)."""
    from platform_helpers import write_config
    from prunebench.config import load_config
    from prunebench.errors import ConfigError
    from prunebench.platform.study_checks import check_study

    config = load_config(write_config(tmp_path, data={"num_ref": 0}))
    args = ("pkr", 1, 1, 1, None, None, None, False)
    with pytest.raises(ConfigError, match="data.num_ref=0: vpp carries state"):
        check_study("vpp", config, *args)
    assert check_study("dynamicvit", config, *args).space.method == "dynamicvit"
    stateless = tmp_path / "vpp-without-map-sm.yaml"
    stateless.write_text("method: vpp\nparams:\n  map_position: {choice: [null]}\n  kappa: {uniform: [0.4, 0.8]}\n")
    assert check_study(str(stateless), config, *args).space.method == "vpp"
