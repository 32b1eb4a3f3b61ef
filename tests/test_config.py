"""Config loading: pydantic validation with one-line errors naming the key, relative paths pinned to the
loading process's working directory."""

import pytest

from prunebench.config import ExperimentConfig, load_config
from prunebench.errors import ConfigError
from prunebench.platform.cli import main
from prunebench.validation import to_dict


def _write(tmp_path, text):
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def _fails(source, overrides=None):
    with pytest.raises(ConfigError) as error:
        load_config(source, overrides)
    message = str(error.value)
    assert "\n" not in message
    return message


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


@pytest.mark.parametrize("preset", ["demo", "benchmark-tiny", "benchmark-cpu", "benchmark-cpu-adapter",
                                    "benchmark-cpu-merging", "paper-tiny", "paper-small"])
def test_preset_to_dict_to_config_round_trip(preset):
    config = load_config(preset, {"method.name": "vpp", "method.params": {"kappa": 0.6, "sm_positions": [4, 7]}})
    plain = to_dict(config)
    assert isinstance(plain["train"]["milestones"], list)  # YAML/JSON-ready: tuples become lists
    again = load_config(plain)
    assert again == config and isinstance(again, ExperimentConfig)
    assert again.train.milestones == config.train.milestones and isinstance(again.train.milestones, tuple)


def test_unknown_key_in_yaml(tmp_path):
    path = _write(tmp_path, "train:\n  steps: 5\n  lrate: 0.1\n")
    assert _fails(path) == (f"{path}: unknown key 'train.lrate'; allowed: steps, batch_size, lr, backbone_lr_mult, "
                            "pruner_lr_mult, weight_decay, clip_norm, milestones, gamma, warmup_steps, log_every")


def test_unknown_section_in_yaml(tmp_path):
    path = _write(tmp_path, "trainig:\n  steps: 5\n")
    assert _fails(path).startswith(f"{path}: unknown key 'trainig'; allowed: name, seed, device, precision, dense_precision, out, data")


def test_wrong_type_in_yaml(tmp_path):
    path = _write(tmp_path, "train:\n  steps: many\n")
    assert _fails(path) == f"{path}: train.steps must be an integer >= 0, got 'many'"


def test_bool_where_a_number_belongs(tmp_path):
    path = _write(tmp_path, "eval:\n  threads: true\n")
    assert _fails(path) == f"{path}: eval.threads must be an integer >= 1, got True"


def test_exponent_without_a_dot_that_yaml_reads_as_text(tmp_path):
    path = _write(tmp_path, "train:\n  lr: 1e-4\n")
    assert _fails(path) == f"{path}: train.lr must be a number > 0, got '1e-4' (YAML reads 1e-4 as text; write 1.0e-4)"


def test_out_of_range_value_in_yaml(tmp_path):
    path = _write(tmp_path, "finetune:\n  lr: 0\n")
    assert _fails(path) == f"{path}: finetune.lr must be a number > 0, got 0"


def test_out_of_range_list_item_in_yaml(tmp_path):
    path = _write(tmp_path, "train:\n  milestones: [0.5, 1.5]\n")
    assert _fails(path) == f"{path}: train.milestones[1] must be a number in (0, 1), got 1.5"


def test_unknown_device_in_yaml(tmp_path):
    path = _write(tmp_path, "device: gpu\n")
    assert _fails(path) == f"{path}: device must be one of 'cpu', 'cuda', got 'gpu'"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_precision_values(precision, tmp_path):
    path = _write(tmp_path, f"precision: {precision}\n")
    assert load_config(path).precision == precision
    assert load_config("demo", {"precision": precision}).precision == precision


def test_precision_defaults_to_fp32():
    assert load_config("demo").precision == "fp32" and ExperimentConfig().precision == "fp32"


def test_the_dense_stage_runs_in_dense_precision_and_everything_else_in_precision():
    split = load_config("demo", {"precision": "bf16", "dense_precision": "fp32"})
    assert (split.stage_precision("train"), split.stage_precision("finetune")) == ("fp32", "bf16")
    same = load_config("demo", {"precision": "bf16"})
    assert same.dense_precision is None
    assert (same.stage_precision("train"), same.stage_precision("finetune")) == ("bf16", "bf16")
    assert _fails("demo", {"dense_precision": "fp64"}) == (
        "--set dense_precision=fp64: dense_precision must be one of 'fp32', 'bf16', 'fp16' or null, got 'fp64'")

def test_unknown_precision_in_yaml(tmp_path):
    path = _write(tmp_path, "precision: fp64\n")
    assert _fails(path) == f"{path}: precision must be one of 'fp32', 'bf16', 'fp16', got 'fp64'"


def test_precision_of_wrong_type_through_set():
    assert _fails("demo", {"precision": 16}) == "--set precision=16: precision must be one of 'fp32', 'bf16', 'fp16', got 16"


def test_unknown_backbone_in_yaml(tmp_path):
    path = _write(tmp_path, "model:\n  backbone: vit_huge\n")
    assert _fails(path) == f"{path}: model.backbone must be one of 'vit_small', 'vit_tiny', got 'vit_huge'"


def test_section_that_is_not_a_mapping(tmp_path):
    path = _write(tmp_path, "train: 5\n")
    assert _fails(path) == f"{path}: train must be a mapping, got 5"


def test_out_of_range_convergence_rule(tmp_path):
    path = _write(tmp_path, "convergence:\n  min_windows: 1\n")
    assert _fails(path) == f"{path}: convergence.min_windows must be an integer >= 2, got 1"


def test_synth_radius_range_of_three_items(tmp_path):
    path = _write(tmp_path, "data:\n  synth: {radius_range: [0.06, 0.08, 0.1]}\n")
    assert _fails(path) == f"{path}: data.synth.radius_range must be a list of 2 numbers, got [0.06, 0.08, 0.1]"


def test_bad_method_param_at_load(tmp_path):
    path = _write(tmp_path, "method:\n  name: vpp\n  params: {kappa: 1.5}\n")
    assert _fails(path) == f"{path}: method.params: kappa=1.5 is outside (0, 1]; allowed: a ratio in (0, 1]"


def test_method_param_of_wrong_type_at_load(tmp_path):
    path = _write(tmp_path, "method:\n  name: svit\n  params: {positions: [3, six]}\n")
    assert _fails(path) == f"{path}: method.params.positions[1] must be an integer, got 'six'"


def test_unknown_method_param_at_load(tmp_path):
    path = _write(tmp_path, "method:\n  name: random\n  params: {tau: 1.0}\n")
    assert _fails(path) == f"{path}: unknown key 'method.params.tau'; allowed: rho, positions"


def test_method_param_against_the_backbone_depth_at_load(tmp_path):
    path = _write(tmp_path, "method:\n  name: dynamicvit\n  params: {positions: [3, 6, 12]}\n")
    assert _fails(path) == f"{path}: method.params: positions=12 is outside the blocks; allowed: 0..11"


def test_unknown_method_name_at_load(tmp_path):
    path = _write(tmp_path, "method: {name: vppp}\n")
    assert _fails(path).startswith(f"{path}: method.name: unknown method 'vppp'; allowed: dense, dynamicvit")


def test_yaml_syntax_error_gives_file_line_column(tmp_path):
    path = _write(tmp_path, "name: x\ntrain:\n  steps: 5\n  lr: 1.0e-4: 3\n")
    assert _fails(path) == f"{path}:4:13: mapping values are not allowed here"


def test_yaml_unclosed_list_names_where_it_started(tmp_path):
    path = _write(tmp_path, "train:\n  milestones: [0.5,\n  steps: 3\n")
    assert _fails(path) == (f"{path}:4:1: expected ',' or ']', but got '<stream end>' "
                            "(while parsing a flow sequence at 2:15)")


def test_top_level_that_is_not_a_mapping(tmp_path):
    path = _write(tmp_path, "- train\n- eval\n")
    assert _fails(path) == f"{path}: the top level must be a mapping of sections, got list"


def test_bad_set_key():
    assert _fails("demo", {"train.lrr": 0.1}).startswith("--set train.lrr=0.1: unknown key 'train.lrr'; allowed: steps")


def test_bad_set_section():
    assert _fails("demo", {"trian.lr": 0.1}).startswith("--set trian.lr=0.1: unknown key 'trian'; allowed: name")


def test_bad_set_value():
    assert _fails("demo", {"train.lr": "abc"}) == "--set train.lr=abc: train.lr must be a number > 0, got 'abc'"


def test_bad_set_below_a_value():
    assert _fails("demo", {"train.lr.x": 1}) == "--set train.lr.x=1: train.lr is not a section, got 0.0004"


def test_bad_set_method_param_names_the_set_not_the_preset():
    overrides = {"method.name": "vpp", "method.params.kappa": 0.6, "method.params.q": 2}
    assert _fails("demo", overrides) == "--set method.params.q=2: method.params: q=2.0 is outside (0, 1]; allowed: a ratio in (0, 1]"


def test_a_problem_of_the_file_names_the_file_despite_good_sets(tmp_path):
    path = _write(tmp_path, "train:\n  steps: -1\n")
    assert _fails(path, {"train.lr": 0.1}) == f"{path}: train.steps must be an integer >= 0, got -1"
    assert load_config(path, {"train.steps": 3}).train.steps == 3  # a --set may fix the file


def test_bad_set_through_the_cli_exits_2_with_one_line(capsys):
    assert main(["train", "demo", "--set", "train.lr=abc"]) == 2
    assert capsys.readouterr().err == ("prunebench train: error: --set train.lr=abc: train.lr must be a number > 0, "
                                       "got 'abc'\n")


def test_unparsable_set_value_through_the_cli(capsys):
    assert main(["eval", "demo", "--checkpoint", "x.safetensors", "--set", "train.milestones=[0.5,"]) == 2
    assert capsys.readouterr().err == ("prunebench eval: error: --set train.milestones=[0.5,: the value is not valid "
                                       "YAML (expected the node content, but found '<stream end>')\n")


def test_yaml_error_through_the_cli(tmp_path, capsys):
    path = _write(tmp_path, "train:\n\tsteps: 3\n")
    assert main(["train", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"prunebench train: error: {path}:2:1: found character '\\t'")


def test_extends_lays_a_config_over_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ntrain: {steps: 7, lr: 0.1}\nbenchmark: {seeds: [0, 1, 2]}\n")
    path = _write(tmp_path, "extends: base.yaml\nname: top\ntrain: {steps: 9}\nbenchmark: {seeds: [5]}\n")
    config = load_config(path)
    assert (config.name, config.train.steps, config.train.lr, config.benchmark.seeds) == ("top", 9, 0.1, (5,))
    adapter, plain = load_config("benchmark-cpu-adapter"), load_config("benchmark-cpu")
    assert adapter.model.adapter == "vit_adapter" and plain.model.adapter == "none"
    assert (adapter.train, adapter.benchmark.seeds, adapter.benchmark.settings, adapter.data.synth) == (
        plain.train, plain.benchmark.seeds, plain.benchmark.settings, plain.data.synth)
    # the adapter run keeps the fp32 / 0.67-milestone protocol it was measured under
    assert adapter.finetune.model_copy(update={"milestones": plain.finetune.milestones}) == plain.finetune
    assert (adapter.precision, adapter.finetune.milestones, plain.precision, plain.dense_precision) == (
        "fp32", (0.67,), "bf16", "fp32")
    assert load_config("paper-small").model.backbone == "vit_small" and load_config("paper-small").model.adapter == "vit_adapter"


@pytest.mark.parametrize("text,says", [
    ("extends: nowhere.yaml\n", "extends nowhere.yaml: nowhere.yaml: config file not found"),
    ("extends: [demo]\n", "extends ['demo']; allowed: the name of a preset or a YAML file"),
    ("extends: experiment.yaml\n", "loops back to itself"),
])
def test_bad_extends_is_one_line_naming_the_file(tmp_path, text, says):
    path = _write(tmp_path, text)
    message = _fails(path)
    assert message.startswith(f"{path}: ") and says in message, message
