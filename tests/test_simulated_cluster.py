"""Data-parallel trials on a simulated GPU cluster (issue 18): Ray's own test cluster (a real GCS and a raylet per
node, GPUs declared), the job's placement from the real code (bench/simulated_cluster.py), Ray's scheduler deciding
where each worker lands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.resources import trial_resources
from scheduler.runstore import RunStore
from scheduler.spec import parse_job

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ray


def test_node_count_per_trial_fills_whole_gpu_nodes_and_the_next_trial_is_demanded(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "simulated_cluster.py"), "--nodes", "4",
                          "--gpus-per-node", "4", "--node-count-per-trial", "2", "--concurrent", "2", "--json"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["workers_per_trial"] == 8 and r["strategy"] == "PACK"
    assert r["resources_per_worker"] == {"CPU": 1.0, "GPU": 1}
    assert r["placed"] == [[4, 4], [4, 4]]  # each trial on 2 whole nodes, none on the CPU head (checked there)
    assert r["free_gpus_when_full"] == 0  # two concurrent trials fill the 4 nodes
    assert r["extra_trial_waits"]
    assert [(g["bundles"], g["bundle"]) for g in r["demand"]] == [(8, {"CPU": 1.0, "GPU": 1.0})]


def _group(tmp_path, nodes: int, gpus_per_node: float, extra: str = ""):
    job = parse_job(f"""\
task: image_classification
training_data: {{path: ./unused}}
target_column_name: label
properties: {{node_count_per_trial: "{nodes}"}}
training_parameters: {{model_name: resnet18}}
{extra}""")
    return trial_resources(job, gpus_per_node, RunStore.at(tmp_path)).group


def test_one_worker_per_node_spreads_and_several_per_node_pack(tmp_path):
    cpu = _group(tmp_path, 3, 0)  # CPU nodes: one worker each, on three different nodes
    assert (cpu.workers, cpu.spread, cpu.scaling_config().placement_strategy) == (3, True, "SPREAD")
    gpu = _group(tmp_path, 3, 8)  # 8-GPU nodes: 24 workers packed onto 3 nodes
    assert (gpu.workers, gpu.spread, gpu.scaling_config().placement_strategy) == (24, False, "PACK")
    two = _group(tmp_path, 2, 0, "visionsweep: {workers_per_node: 2}")
    assert (two.workers, two.scaling_config().placement_strategy) == (4, "PACK")
