"""A real two-node Ray cluster on this machine (cluster/local.py), token auth on, and a sweep submitted to it
with `ray job submit`, as README.md ## Cluster walks through; plus the cluster-launcher / KubeRay files."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import uuid
from pathlib import Path

import pytest
import yaml

from cluster.local import MARKER_ENV, LocalCluster

# the tests that start the cluster are marked `ray`; the file checks at the end are not
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
SAMPLE = ROOT / "trainers" / "sample_data" / "fashion_mnist"


def _client_env(cluster_env: dict[str, str]) -> dict[str, str]:
    """This process's environment without any Ray client settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", MARKER_ENV)}
    env.update(cluster_env)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _readme_block(start: str) -> str:
    """The heredoc in README.md ## Cluster that follows the line ending with ``start`` (up to its end marker)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Cluster"):]
    lines = section.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.rstrip().endswith(start))
    end = re.search(r"<<'(\w+)'", lines[i]).group(1)
    j = next(n for n in range(i + 1, len(lines)) if lines[n].strip() == end)
    return "\n".join(lines[i + 1:j]) + "\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One cluster for the module, started with the README's command; LocalCluster reads it back from its dir."""
    d = tmp_path_factory.mktemp("cluster")
    env = _client_env({})
    start = _run([sys.executable, "-m", "cluster.local", "start", "--dir", str(d), "--node-timeout", "5"],
                 env=env, timeout=300, cwd=ROOT)
    c = LocalCluster.from_dir(d)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        yield c
    finally:
        c.stop()


@pytest.mark.ray
def test_two_alive_nodes_with_their_own_cpus(cluster):
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2
    assert sorted(n["is_head_node"] for n in nodes) == [False, True]
    assert [n["resources_total"]["CPU"] for n in nodes] == [1.0, 1.0]
    # the memory caps reached both nodes (otherwise each would claim the machine's RAM)
    assert {n["resources_total"]["memory"] for n in nodes} == {2 * 1024**3}
    # the client environment is what `eval "$(python -m cluster.local env --dir ...)"` exports
    out = _run([sys.executable, "-m", "cluster.local", "env", "--dir", str(cluster.dir)], env=_client_env({}),
               cwd=ROOT).stdout
    exported = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in out.splitlines())
    assert exported == cluster.env()
    assert exported["RAY_AUTH_MODE"] == "token" and Path(exported["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    assert oct(Path(exported["RAY_AUTH_TOKEN_PATH"]).stat().st_mode & 0o777) == "0o600"


@pytest.mark.ray
def test_token_auth_is_on(cluster, tmp_path):
    # the Jobs REST API: 401 without a token, 403 with a wrong one, 200 with the cluster's
    with pytest.raises(urllib.error.HTTPError) as e:
        cluster.api("/api/jobs/", token="")
    assert e.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as e:
        cluster.api("/api/jobs/", token="0" * 64)
    assert e.value.code == 403
    assert isinstance(cluster.api("/api/jobs/"), list)

    # the CLI: a client without RAY_AUTH_MODE=token and the token (and no ~/.ray/auth_token) is refused ...
    home = tmp_path / "home"
    home.mkdir()
    refused = _run([RAY, "job", "list", "--address", cluster.dashboard_url], env={**_client_env({}), "HOME": str(home)})
    assert refused.returncode != 0 and "AuthenticationError" in refused.stdout + refused.stderr
    # ... and so is one with token mode on but the wrong token, at the GCS too (`ray status`)
    wrong = _client_env({**cluster.env(), "RAY_AUTH_TOKEN": "0" * 64, "HOME": str(home)})
    refused = _run([RAY, "status"], env=wrong)
    assert refused.returncode != 0 and "AuthenticationError" in refused.stdout + refused.stderr
    # the README's client environment gets in
    # (`ray status` reads the autoscaler's view, which can lag the dashboard's: both nodes alive first, then a
    # bounded number of reads until the view has caught up)
    cluster.wait_for_nodes(2)
    for _ in range(30):
        ok = _run([RAY, "status"], env={**_client_env(cluster.env()), "HOME": str(home)})
        assert ok.returncode == 0, ok.stdout + ok.stderr
        if ok.stdout.count("node_") == 2:
            break
    assert ok.stdout.count("node_") == 2, ok.stdout


def _submit(cluster, tmp_path, job_text: str) -> tuple[Path, str]:
    """The README's path: the job folder (the bundled sample as data/, the weights, job.yml) submitted with
    ``ray job submit --working-dir``; returns the run folder and the job's logs once it has succeeded."""
    work = tmp_path / "my-job"
    work.mkdir()
    shutil.copytree(SAMPLE, work / "data")
    shutil.copytree(ROOT / ".weights", work / "weights")  # `make setup` filled it (the README copies it too)
    (work / "job.yml").write_text(job_text)
    out = tmp_path / "runs" / "my-sweep"
    env = _client_env(cluster.env())
    sub_id = f"vs-test-{uuid.uuid4().hex[:8]}"
    # as in the README (which tails the logs; here: --no-wait, then `ray job logs --follow` until it ends)
    submit = _run([RAY, "job", "submit", "--no-wait", "--submission-id", sub_id, "--working-dir", str(work),
                   "--", "visionsweep", "run", "job.yml", "--output", str(out)], env=env)
    assert submit.returncode == 0, submit.stdout + submit.stderr

    # `ray job logs --follow` returns when the job ends (the event waited on; its timeout only keeps a hung
    # cluster from hanging the suite)
    _run([RAY, "job", "logs", "--follow", sub_id], env=env, timeout=1800)
    status = cluster.api(f"/api/jobs/{sub_id}")["status"]
    logs = cluster.api(f"/api/jobs/{sub_id}/logs").get("logs", "")
    if status != "SUCCEEDED":
        pytest.fail(f"job {sub_id} ended {status}:\n{logs[-4000:]}")
    # the README's status command agrees
    st = _run([RAY, "job", "status", sub_id], env=env)
    assert st.returncode == 0 and "succeeded" in (st.stdout + st.stderr).lower()
    return out, logs


def _assert_complete(out: Path, n_trials: int) -> list[dict]:
    for f in ("job.yml", "job.resolved.yaml", "leaderboard.csv", "summary.json", "best/model.json",
              "best/model.safetensors", "best/labels.json"):
        assert (out / f).is_file(), f
    trials = sorted((out / "trials").iterdir())
    assert len(trials) == n_trials
    for t in trials:
        assert json.loads((t / "status.json").read_text())["status"] == "completed"
        assert (t / "params.json").is_file() and (t / "metrics.jsonl").read_text().strip()
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert len(rows) == n_trials and rows[0]["rank"] == "1"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == n_trials and summary["best_trial"] == rows[0]["trial_id"]
    assert {t.name for t in trials} == {r["trial_id"] for r in rows}
    return [json.loads(line) for t in trials for line in (t / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ray
def test_job_submit_runs_a_sweep_to_a_complete_run_folder(cluster, tmp_path):
    out, _ = _submit(cluster, tmp_path, _readme_block("cat > /tmp/my-job/job.yml <<'YML'"))
    _assert_complete(out, 2)


@pytest.mark.ray
def test_job_submit_of_data_parallel_trials_across_both_nodes(cluster, tmp_path):
    # the README's job with node_count_per_trial: "2": each trial a Ray Train group of one worker per node
    job = _readme_block("cat > /tmp/my-job/job.yml <<'YML'").replace(
        "visionsweep: {weights_store: weights}", "visionsweep: {weights_store: weights, cpus_per_trial: 0.4}")
    job += 'properties: {node_count_per_trial: "2"}\n'
    out, logs = _submit(cluster, tmp_path, job)
    metrics = _assert_complete(out, 2)
    assert all(m.get("workers") == 2 for m in metrics), metrics
    # the driver kept its working directory (the job's files) to the end: no lost file on any progress line
    assert "No such file or directory" not in logs, logs[-4000:]
    # Ray Train's placement-group cleaner knows its cluster even where another Ray runs on the same machine
    assert "Found multiple active Ray instances" not in logs, logs[-4000:]


NOTEBOOK_SUBMIT = """
import json, sys
from visionsweep import Input, MLClient, automl

job = automl.image_classification(training_data=Input(path=sys.argv[1]), target_column_name="label",
                                  experiment_name="notebook", visionsweep={"weights_store": sys.argv[2]})
job.set_training_parameters(model_name="mobilenetv2", number_of_epochs=1, training_crop_size=32,
                            validation_resize_size=32, validation_crop_size=32)
ml_client = MLClient()
returned_job = ml_client.jobs.create_or_update(job)
ml_client.jobs.stream(returned_job.name)
got = ml_client.jobs.get(returned_job.name)
print(json.dumps({"name": got.name, "status": got.status, "where": got.where, "run_folder": got.run_folder,
                  "best": got.best_trial, "package": got.result.package}))
"""


@pytest.mark.ray
def test_a_notebooks_mlclient_submits_through_the_jobs_api(cluster, tmp_path):
    """``MLClient().jobs`` with RAY_ADDRESS set to the cluster's Jobs API (token auth on): the job is a Ray job
    named as the notebook's job, `ray job status` sees it, and the run folder holds the model package."""
    env = {**_client_env(cluster.env()), "VISIONSWEEP_HOME": str(tmp_path / "home")}
    r = _run([sys.executable, "-c", NOTEBOOK_SUBMIT, str(SAMPLE / "train"), str(ROOT / ".weights")], env=env,
             timeout=1800, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["status"] == "Completed" and got["where"] == "ray" and got["name"].startswith("notebook-")
    assert r.stdout.startswith(f"RunId: {got['name']}\n") and "sweep: single mode" in r.stdout
    assert (Path(got["package"]) / "model.json").is_file()
    st = _run([RAY, "job", "status", got["name"]], env=env)
    assert st.returncode == 0 and "succeeded" in (st.stdout + st.stderr).lower()


@pytest.mark.ray
def test_stop_worker_leaves_the_head_running(cluster):
    head_before = cluster.pids("head")
    worker = cluster.pids("worker")
    assert worker
    cluster.stop_worker(wait_dead=True, timeout=60)
    assert not any(p in cluster.pids() for p in worker)
    assert len(cluster.alive_nodes()) == 1 and cluster.alive_nodes()[0]["is_head_node"]
    assert set(head_before) <= set(cluster.pids("head"))


@pytest.mark.ray
def test_stop_ends_our_processes_only(cluster):
    ours = cluster.pids()
    assert ours
    temp_dir = cluster.state["temp_dir"]
    # a sentinel that looks like a Ray process of this very cluster (name and temp dir on its command line)
    # but was not started by it: `ray stop` would match it by name; stop() must not touch it
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "raylet",
                                 f"--temp_dir={temp_dir}"], env=_client_env({}), start_new_session=True)
    try:
        cluster.stop()
        assert cluster.pids() == {}
        for pid, start in ours.items():
            stat = Path(f"/proc/{pid}/stat")
            # gone, a zombie waiting for its reaper, or the pid reused by a newer process
            assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX" \
                or int(stat.read_text().rsplit(")", 1)[1].split()[19]) != start, pid
        assert sentinel.poll() is None, "stop() killed a process it did not start"
        assert not Path(temp_dir).exists()
        with pytest.raises(urllib.error.URLError):
            cluster.api("/api/jobs/", timeout=2)
        # the CLI agrees: nothing running
        assert _run([sys.executable, "-m", "cluster.local", "status", "--dir", str(cluster.dir)],
                    env=_client_env({}), cwd=ROOT).returncode == 1
    finally:
        sentinel.kill()
        sentinel.wait()


def test_cluster_launcher_yamls_validate():
    from ray.autoscaler._private.util import prepare_config, validate_config

    for name, provider, gpu_type in [("azure-gpu.yaml", "azure", "Standard_NC24ads_A100_v4"),
                                     ("aws-gpu.yaml", "aws", "g5.")]:
        text = (ROOT / "cluster" / name).read_text()
        cfg = yaml.safe_load(text)
        validate_config(prepare_config(cfg))    # as `ray up` does: provider defaults filled in, Ray's schema
        assert cfg["provider"]["type"] == provider
        assert cfg["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
        assert any("RAY_AUTH_MODE=token" in o for o in cfg["docker"]["run_options"])
        assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"   # the container's ~
        assert gpu_type in text
        assert any("visionsweep" in c for c in cfg["setup_commands"])
        workers = [t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
        assert workers and all(t["max_workers"] > t.get("min_workers", 0) for t in workers)   # autoscaling
        # spot capacity: a spot-labelled GPU type, and the cloud's notice watcher started on every worker
        assert any(t.get("labels", {}).get("ray.io/market-type") == "spot" and t["resources"].get("GPU")
                   for t in workers)
        assert any(f"cluster.notice --cloud {provider}" in c for c in cfg["worker_start_ray_commands"])
        # no secrets in the file: credentials come from the job's runtime_env or the nodes' identity
        assert not re.search(r"AccountKey=|AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S|sig=", text)


def test_kuberay_manifest():
    docs = [d for d in yaml.safe_load_all((ROOT / "cluster" / "kuberay.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"RayCluster", "RayJob"} <= set(kinds)
    for spec in (kinds["RayCluster"]["spec"], kinds["RayJob"]["spec"]["rayClusterSpec"]):
        assert spec["authOptions"]["mode"] == "token"
        workers = spec["workerGroupSpecs"]
        assert any(c["resources"]["limits"].get("nvidia.com/gpu")
                   for w in workers for c in w["template"]["spec"]["containers"])
    spot = [w for w in kinds["RayCluster"]["spec"]["workerGroupSpecs"]
            if w["rayStartParams"].get("labels") == "ray.io/market-type=spot"]
    assert spot and all(w["minReplicas"] == 0 for w in spot)
    job = kinds["RayJob"]["spec"]
    assert job["entrypoint"] == "visionsweep run job.yml --output az://runs/my-sweep"
    envs = [e for c in job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
            for e in c.get("env", [])]
    assert any("secretKeyRef" in e.get("valueFrom", {}) for e in envs)
    assert not any("value" in e and "AccountKey=" in str(e["value"]) for e in envs)
