"""cluster.yaml passes Ray's own schema and the checks `ray up` runs before contacting the cloud."""

import copy
import json
import os
import re
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def _load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_schema_and_validate_config():
    schema = json.loads((Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text())
    config = _load()
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cpu_head_gpu_workers_and_no_open_ports():
    config = _load()
    nodes = config["available_node_types"]
    assert "GPU" not in nodes[config["head_node_type"]]["resources"]
    assert any(n["resources"].get("GPU", 0) >= 1 for n in nodes.values())
    for rule in config["provider"]["security_group"]["IpPermissions"]:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule["IpRanges"])
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert any("constraints.txt" in c and "-e ~/prunebench" in c for c in config["setup_commands"])
    assert "~/prunebench" in config["file_mounts"]


def _cluster_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### On a cluster")
    return text[start:text.index("\n## ", start)]


def test_readme_cluster_commands_agree_with_the_excludes():
    config, section = _load(), _cluster_section()
    excludes = json.loads(re.search(r'"excludes": (\[[^\]]*\])', section).group(1))
    assert [p.removeprefix("**/") for p in config["rsync_exclude"]] == excludes
    dropped = [p.strip("*/") for p in config["rsync_exclude"]]
    for value in re.findall(r"--from (\S+)", section):  # nothing the excludes drop is passed to a job
        assert value.startswith(("runs:/", "s3://")) or not any(f"{d}/" in value for d in dropped), value
    assert ".git" in excludes and "PRUNEBENCH_CODE_VERSION" in section  # the code version travels by env
    assert "--storage-path s3://" in section and "--tracking-uri http://127.0.0.1:5000" in section
    server = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(server) == 1 and "--host 127.0.0.1" in server[0] and "--artifacts-destination s3://" in server[0]
    assert "ray attach cluster.yaml -p 5000" in section
