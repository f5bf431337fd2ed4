"""Clusters that grow and shrink (issue 30): a cluster YAML's node types launched and terminated by Ray's own
autoscaler (cluster/autoscaling.py: the v1 monitor with the fake multi-node provider, real raylets on this
machine), with a sweep of data-parallel trials that needs two GPU nodes the cluster does not have when it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cluster.autoscaling import HEAD_TYPE, AutoscalingLocalCluster, autoscaler_config
from cluster.local import MARKER_ENV, ClusterError
from tests.metadata_server import MetadataServer

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "tests" / "fixtures" / "cluster" / "autoscaling.yaml"
SAMPLE = ROOT / "trainers" / "sample_data" / "fashion_mnist"

# Runs beside the sweep in a process of its own (this one may hold another Ray): every 0.2 s, one JSON line per
# change of the cluster's GPU nodes (which are alive, how many of their GPUs are taken, their market label) or of
# its placement groups (each created group's bundles and the node of each; "head": the head node's id).
WATCHER = textwrap.dedent("""
    import json, sys, time
    import ray
    from ray._private.state import available_resources_per_node
    from ray.util.placement_group import placement_group_table
    ray.init(address=sys.argv[1], logging_level="ERROR")
    out, last = open(sys.argv[2], "a"), None
    while True:
        free = available_resources_per_node()
        alive = [n for n in ray.nodes() if n["Alive"]]
        gpu = {n["NodeID"]: n for n in alive if n["Resources"].get("GPU")}
        # (a resource with nothing left is missing from a node's available resources)
        nodes = {i: {"gpus": n["Resources"]["GPU"],
                     "used": n["Resources"]["GPU"] - free[i].get("GPU", 0.0) if i in free else None,
                     "market": n.get("Labels", {}).get("ray.io/market-type")} for i, n in gpu.items()}
        pgs = {i: [{"resources": b, "node": pg["bundles_to_node_id"].get(k)} for k, b in pg["bundles"].items()]
               for i, pg in placement_group_table().items() if pg["state"] == "CREATED"}
        head = next((n["NodeID"] for n in alive if "node:__internal_head__" in n["Resources"]), None)
        if (nodes, pgs) != last:
            out.write(json.dumps({"t": time.time(), "nodes": nodes, "pgs": pgs, "head": head}) + "\\n")
            out.flush()
            last = (nodes, pgs)
        time.sleep(0.2)
""")


def _client_env(cluster: AutoscalingLocalCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS", MARKER_ENV)}
    return {**env, **cluster.env(), "VISIONSWEEP_DATA_CHECK": "off"}


def _states(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(path: Path, what: str, ok, timeout: float = 120.0) -> list[dict]:
    """Wait for the watcher to write a state that satisfies ``ok`` (the watcher's lines are the events waited
    on; the bound only keeps a broken cluster from hanging the suite)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = _states(path)
        if states and ok(states[-1]["nodes"]):
            return states
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout:.0f} s for {what}; the watcher saw: {_states(path)[-5:]}")


def _data_parallel_job(tmp_path: Path, limits: str, epochs: int, batch: int, extra: str = "",
                       visionsweep: str = "") -> Path:
    """A classification job of two data-parallel workers per trial (node_count_per_trial 2), 1 CPU + 1 GPU each."""
    work = tmp_path / "job"
    work.mkdir()
    (work / "job.yml").write_text(textwrap.dedent(f"""\
        type: automl
        task: image_classification
        target_column_name: label
        training_data: {{path: {SAMPLE / 'train'}, type: mltable}}
        limits: {limits}
        training_parameters: {{model_name: mobilenetv2, number_of_epochs: {epochs}, training_batch_size: {batch},
                              training_crop_size: 32, validation_resize_size: 32, validation_crop_size: 32}}
        properties: {{node_count_per_trial: "2"}}
        visionsweep: {{weights_store: {ROOT / '.weights'}, cpus_per_trial: 1, deploy_top_k: 0{visionsweep}}}
        """) + extra)
    return work


def test_the_autoscaling_config_keeps_the_yamls_node_types_and_drops_the_clouds_keys():
    cfg = autoscaler_config(CLUSTER_YAML, "127.0.0.1:1234")
    assert cfg["provider"]["type"] == "fake_multinode" and cfg["provider"]["gcs_address"] == "127.0.0.1:1234"
    assert cfg["head_node_type"] == HEAD_TYPE
    assert cfg["available_node_types"]["gpu-worker"]["resources"]["GPU"] == 1
    assert cfg["available_node_types"]["gpu-worker"]["min_workers"] == 0
    assert cfg["available_node_types"]["gpu-worker"]["max_workers"] == 2
    assert cfg["idle_timeout_minutes"] == pytest.approx(0.1)
    # the cloud files' node types, with their node_config and docker settings, read the same way
    aws = autoscaler_config(ROOT / "cluster" / "aws-gpu.yaml", "h:1")
    assert all(set(t) <= {"resources", "node_config", "min_workers", "max_workers", "labels"}
               for t in aws["available_node_types"].values())
    assert aws["available_node_types"][HEAD_TYPE]["max_workers"] == 0
    # node types keep their labels: spot capacity is marked there (cluster/capacity.py)
    assert cfg["available_node_types"]["gpu-worker"]["labels"] == {"ray.io/market-type": "spot"}
    assert cfg["available_node_types"][HEAD_TYPE]["labels"] == {"ray.io/market-type": "on-demand"}
    # the cloud files have the test's shape: a gpu-worker type from zero nodes, with a GPU, and a spot GPU type
    for name in ("aws-gpu.yaml", "azure-gpu.yaml"):
        types = autoscaler_config(ROOT / "cluster" / name, "h:1")["available_node_types"]
        worker = types["gpu-worker"]
        assert worker["min_workers"] == 0 and worker["resources"]["GPU"] >= 1 and worker["max_workers"] >= 2
        assert worker["labels"] == {"ray.io/market-type": "on-demand"}
        spot = [t for t in types.values() if t.get("labels", {}).get("ray.io/market-type") == "spot"]
        assert spot and all(t["min_workers"] == 0 and t["resources"]["GPU"] >= 1 for t in spot), name
        assert types[HEAD_TYPE]["labels"] == {"ray.io/market-type": "on-demand"}, name
    with pytest.raises(ClusterError, match=r"available_node_types\.w\.labels: expected string keys and values"):
        autoscaler_config({"available_node_types": {"h": {"resources": {"CPU": 1}},
                                                    "w": {"resources": {"CPU": 1}, "labels": {"spot": True}}},
                           "head_node_type": "h"}, "h:1")
    with pytest.raises(ClusterError, match=r"head_node_type: expected one of"):
        autoscaler_config({"available_node_types": {"a": {"resources": {"CPU": 1}}}, "head_node_type": "b"}, "h:1")
    with pytest.raises(ClusterError, match=r"available_node_types\.w\.resources: expected"):
        autoscaler_config({"available_node_types": {"h": {"resources": {"CPU": 1}}, "w": {}},
                           "head_node_type": "h"}, "h:1")


@pytest.mark.ray
def test_a_data_parallel_sweep_makes_the_autoscaler_add_two_gpu_nodes_and_remove_them_when_idle(tmp_path):
    """The head has 1 CPU and no GPU; each trial is two data-parallel workers of 1 CPU + 1 GPU, one per node
    (node_count_per_trial 2): only two "gpu-worker" nodes can hold one. The sweep plans GPU trials from the node
    types the autoscaler can launch, the autoscaler launches two nodes, both trials train on them (each node's GPU
    taken), and once the sweep is over the nodes go after the YAML's idle timeout (0.1 min)."""
    work = _data_parallel_job(tmp_path, "{max_trials: 2, max_concurrent_trials: 1}", epochs=1, batch=32,
                              extra="search_space:\n  - learning_rate: {type: choice, values: [0.0003, 0.001]}\n"
                                    "sweep: {sampling_algorithm: grid}\n")
    out = tmp_path / "run"
    states = tmp_path / "nodes.jsonl"
    with AutoscalingLocalCluster(tmp_path / "cluster", CLUSTER_YAML) as cluster:
        env = _client_env(cluster)
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER, cluster.address, str(states)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(states, "the watcher's first look at the cluster", lambda nodes: True)
            assert _states(states)[0]["nodes"] == {}, "the cluster starts with no GPU node"
            started = time.time()
            run = subprocess.run([str(Path(sys.executable).parent / "visionsweep"), "run", str(work / "job.yml"),
                                  "--output", str(out)], env=env, cwd=work, capture_output=True, text=True,
                                 timeout=1200)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
            seen = _states(states)
            # the autoscaler launched the two nodes a trial needs, and trials trained on both at once (their GPUs
            # taken); on a loaded machine the gap between the two trials can outlast the idle timeout, and then the
            # second trial gets new nodes
            launched = {n for s in seen for n in s["nodes"]}
            used = {n for s in seen for n, v in s["nodes"].items() if v["used"] == 1}
            assert len(launched) >= 2 and len(used) >= 2, seen
            assert any(len(s["nodes"]) >= 2 and sum(v["used"] == 1 for v in s["nodes"].values()) == 2 for s in seen)
            # every trial trained as two workers and finished
            rows = [json.loads(line) for t in sorted((out / "trials").iterdir())
                    for line in (t / "metrics.jsonl").read_text().splitlines()]
            assert len(list((out / "trials").iterdir())) == 2
            assert rows and all(r.get("workers") == 2 for r in rows), rows
            summary = json.loads((out / "summary.json").read_text())
            assert summary["state"] == "finished" and summary["best_trial"]
            # spot capacity: the GPU nodes are labelled spot, the workers trained there and each evaluation says so;
            # every trial's driver (its placement group of one CPU-only bundle) stayed on the on-demand head
            assert all(v["market"] == "spot" for s in seen for v in s["nodes"].values()), seen
            assert all(r.get("spot_workers") == 2 for r in rows), rows
            groups = [(s["head"], g) for s in seen for g in s["pgs"].values()]
            drivers = [(head, g) for head, g in groups if all("GPU" not in b["resources"] for b in g)]
            workers = [b for _, g in groups for b in g if "GPU" in b["resources"]]
            assert drivers and all(b["node"] == head for head, g in drivers for b in g), groups
            assert workers and all(b["node"] in launched for b in workers), groups
            assert "spot capacity: node type gpu-worker" in run.stderr, run.stderr[-3000:]
            status = subprocess.run([str(Path(sys.executable).parent / "visionsweep"), "status", str(out), "--json"],
                                    env=env, capture_output=True, text=True, timeout=120)
            assert status.returncode == 0, status.stderr
            assert [t["capacity"] for t in json.loads(status.stdout)["trials"]] == ["spot", "spot"]
            # idle after the sweep: the autoscaler removes both nodes
            ended = time.time()
            seen = _wait_for(states, "the idle GPU nodes to be terminated", lambda nodes: nodes == {})
            up = [s["t"] - started for s in seen if s["nodes"]]
            print(f"\nautoscaling: first GPU node after {up[0]:.1f} s, both after "
                  f"{min(s['t'] - started for s in seen if len(s['nodes']) == 2):.1f} s, the sweep took "
                  f"{ended - started:.1f} s, no GPU node {seen[-1]['t'] - ended:.1f} s after it ended; best accuracy "
                  f"{summary['best_metric']:.3f} after one epoch (10 classes: chance 0.100)")
        finally:
            watcher.kill()
            watcher.wait()
    assert not cluster.pids(), "a process of the cluster outlived stop()"


@pytest.mark.ray
def test_a_drained_nodes_trial_checkpoints_at_the_next_step_and_resumes_mid_epoch_on_a_new_node(tmp_path):
    """A spot node's notice mid-epoch: the cloud's metadata endpoint says the VM goes in 30 s (AWS's
    ``spot/instance-action``, a local stand-in), the node's watcher (``cluster.notice``) drains it through Ray's API
    with the preemption reason, and the trial's workers stop at the next optimiser step with a step checkpoint. Ray
    Train counts a preemption, not a failure (the job allows no retries); the cloud takes the node at its deadline
    (killed here), the autoscaler adds one in its place, and the trial goes on from that step (not from its last
    evaluation) and finishes, reporting each epoch once."""
    import yaml

    cfg = yaml.safe_load(CLUSTER_YAML.read_text())
    cfg["max_workers"] = cfg["available_node_types"]["gpu-worker"]["max_workers"] = 3  # room for a replacement
    # no retries: a preemption is not a failure (Ray Train counts it apart: trainers.preemption.Preempted)
    work = _data_parallel_job(tmp_path, "{max_trials: 1}", epochs=3, batch=4, visionsweep=", trial_retries: 0")
    out = tmp_path / "run"
    states = tmp_path / "nodes.jsonl"
    # the head declares a killed node dead within seconds (default: tens of seconds)
    fast_health = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    with AutoscalingLocalCluster(tmp_path / "cluster", cfg, extra_env=fast_health) as cluster, \
            MetadataServer(lead_s=20) as metadata:
        env = _client_env(cluster)
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER, cluster.address, str(states)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run = subprocess.Popen([str(Path(sys.executable).parent / "visionsweep"), "run", str(work / "job.yml"),
                                "--output", str(out)], env=env, cwd=work, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            # the first evaluation is in: epoch 2 has begun on both nodes
            deadline = time.monotonic() + 600
            while not list(out.glob("trials/*/metrics.jsonl")) or not \
                    next(out.glob("trials/*/metrics.jsonl")).read_text().strip():
                assert run.poll() is None, run.stderr.read()[-4000:]
                assert time.monotonic() < deadline, "no evaluation within 10 minutes"
                time.sleep(0.2)
            trial = next(out.glob("trials/*/metrics.jsonl")).parent.name
            training = _states(states)[-1]["nodes"]
            assert len(training) == 2 and all(v["used"] == 1 for v in training.values()), training
            leaving = sorted(training)[0]
            notice = [sys.executable, "-m", "cluster.notice", "--cloud", "aws", "--address", cluster.address,
                      "--metadata-url", metadata.url, "--poll-s", "0.5", "--node-id"]
            # the watcher of an on-demand node (the head) has nothing to watch
            head = _states(states)[-1]["head"]
            quiet = subprocess.run(notice + [head], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert quiet.returncode == 0 and "not labelled spot" in quiet.stderr, quiet.stderr
            # the spot node's watcher reads AWS's notice (two minutes ahead; 20 s here) and drains its node
            watcher_of_node = subprocess.Popen(notice + [leaving], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True)
            while metadata.reads == 0:  # it polls the endpoint
                assert watcher_of_node.poll() is None, watcher_of_node.stderr.read()
                time.sleep(0.1)
            drained_at = time.time()
            taken_at = metadata.preempt()
            assert watcher_of_node.wait(timeout=120) == 0, watcher_of_node.stderr.read()
            assert "drained" in watcher_of_node.stderr.read()
            marker = out / "ray" / "train" / trial / "preempted" / "COMPLETE"
            while not marker.exists():
                assert run.poll() is None, run.stderr.read()[-4000:]
                assert time.monotonic() < deadline, "no step checkpoint after the drain"
                time.sleep(0.1)
            checkpointed_at = marker.stat().st_mtime
            # the group has stopped; Ray Train counts a preemption (no retry spent: trial_retries is 0) and waits
            # for room, which the autoscaler makes once the cloud has taken the node at the notice's deadline
            while time.time() < taken_at:  # the stand-in cloud's clock: the instance goes at the announced time
                assert run.poll() is None, run.stderr.read()[-6000:]
                time.sleep(0.2)
            cluster.kill_node(leaving)
            stdout, stderr = run.communicate(timeout=900)
            assert run.returncode == 0, stdout[-2000:] + stderr[-6000:]
        finally:
            if run.poll() is None:
                os.killpg(run.pid, 9)
            watcher.kill()
            watcher.wait()
    metrics = [json.loads(line) for line in (out / "trials" / trial / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]  # each epoch reported once: one continuous trial
    resumed = [m for m in metrics if "resumed_from_step" in m]
    assert len(resumed) == 1 and resumed[0]["epoch"] == 2, metrics
    steps_per_epoch = 40  # 320 training images, 2 workers x 4 a step
    batch = resumed[0]["resumed_from_batch"]
    assert 0 < batch < steps_per_epoch, "the checkpoint was taken mid-epoch"
    assert resumed[0]["resumed_from_step"] == steps_per_epoch + batch
    assert resumed[0]["resumed_from_epoch"] == 1
    assert json.loads((out / "summary.json").read_text())["state"] == "finished"
    nodes = {n for s in _states(states) for n in s["nodes"]}
    # a node in its place (the autoscaler may briefly add one more while the group's placement is pending)
    assert leaving in nodes and len(nodes) >= 3, "the autoscaler replaced the node that left"
    print(f"\npreemption: step checkpoint {checkpointed_at - drained_at:.1f} s after the cloud's notice (batch {batch} "
          f"of epoch 2; steps trained twice: 0); training went on {resumed[0]['resumed_after_s']:.1f} s after "
          "the step checkpoint was written; accuracy by epoch "
          + ", ".join(f"{m['accuracy']:.3f}" for m in metrics) + " (10 classes: chance 0.100)")
