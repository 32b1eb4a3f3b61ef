"""cluster.yaml passes Ray's own schema and the checks `ray up` runs before contacting the cloud."""

import copy
import json
import os
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
