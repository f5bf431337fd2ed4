"""A worker node leaves mid-sweep: its trial is rescheduled on the remaining node (from its last checkpoint)
and the sweep completes with every trial accounted for.

A real two-node cluster (cluster/local.py: head and worker, 1 CPU each) runs ``visionsweep run`` as a client
driver (``RAY_ADDRESS`` etc. from ``cluster.env()``; a driver on the head's host attaches to the head node, so
it and the objects it puts survive the worker). With ``max_concurrent_trials: 2`` and 1 CPU per trial, two
trials run at once, one per node. Once the trial on the worker node has reported two epochs, the worker node
is SIGKILLed (``stop_worker``), as a lost VM would be. Tune sees the trial fail at once (its actor's socket
closes), the head declares the node dead a few seconds later (``node_timeout_s``), and the trial is retried
(``trial_retries``) on the head, from its last checkpoint, once the head's CPU is free (not before the trial
running there ends: ~20-25 s after the loss here, of which ~10 s is starting the new trial process).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.local import MARKER_ENV, LocalCluster
from scheduler.runfolder import read_metrics
from tests.test_sweep import make_job

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
EPOCHS = 4
NODE_TIMEOUT_S = 3


def _client_env(cluster_env: dict[str, str]) -> dict[str, str]:
    """This process's environment without any Ray client settings, plus the cluster's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", MARKER_ENV)}
    env.update(cluster_env)
    return env


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path / "cluster", head_cpus=1, worker_cpus=1, node_timeout_s=NODE_TIMEOUT_S)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def driver(cluster, tmp_path):
    """Starts ``visionsweep run`` against the cluster; kills it (its whole session) at teardown, before the
    cluster is stopped (this fixture depends on ``cluster``, so it is torn down first)."""
    procs: list[subprocess.Popen] = []

    def start(job_file: Path, run: Path, log: Path) -> subprocess.Popen:
        out = open(log, "wb")
        p = subprocess.Popen([str(BIN / "visionsweep"), "run", str(job_file), "--output", str(run)],
                             cwd=job_file.parent, env=_client_env(cluster.env()), stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)


def _metrics(trial: Path) -> list[dict]:
    return read_metrics(trial)


def _status(trial: Path) -> str | None:
    try:
        return json.loads((trial / "status.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def _tune_results(run: Path, trial_id: str) -> list[dict]:
    """Ray Tune's own result lines of a trial (pid of the process that reported each)."""
    f = run / "ray" / "sweep" / trial_id / "result.json"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def _trials_on(cluster: LocalCluster, node: str, trial_ids: set[str]) -> dict[str, int]:
    """{trial id: pid} of the trials whose process runs on ``node``: Tune changes a trial's working directory
    to ``.../working_dirs/<trial dir name>`` (``RAY_CHDIR_TO_TRIAL_DIR``), and trial dirs are named by id."""
    found = {}
    for pid in cluster.pids(node):
        try:
            name = Path(os.readlink(f"/proc/{pid}/cwd")).name
        except OSError:     # exited meanwhile
            continue
        if name in trial_ids:
            found[name] = pid
    return found


def test_a_lost_worker_node_s_trial_is_rescheduled_and_the_sweep_completes(cluster, driver, small_mltable,
                                                                            tmp_path):
    job = make_job(small_mltable, """\
  model_name: resnet18
  checkpoint_frequency: 1
limits:
  max_trials: 4
  max_concurrent_trials: 2
search_space:
  - learning_rate: {type: choice, values: [0.001, 0.01]}
    momentum: {type: choice, values: [0.8, 0.9]}
sweep:
  sampling_algorithm: grid
visionsweep:
  trial_retries: 2
  tracking: {enabled: false}
""", epochs=EPOCHS, batch=16)
    job_file = tmp_path / "job" / "job.yml"
    job_file.parent.mkdir()
    job_file.write_text(job.text)
    run, log = tmp_path / "run", tmp_path / "driver.log"
    t0 = time.monotonic()
    proc = driver(job_file, run, log)

    def fail(msg: str):
        pytest.fail(f"{msg}\n--- driver log (tail) ---\n{log.read_text(errors='replace')[-6000:]}")

    def tick() -> None:  # a pause between looks at the run folder that ends at once when the driver exits
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass

    # wait until a trial on the worker node has reported 2 epochs (or the driver exits): Tune asks a trial for
    # its next result only once it has registered the previous one's checkpoint, so epoch 1's is Tune's by then
    lost = lost_pid = None
    while True:
        if proc.poll() is not None:
            fail(f"the sweep ended (exit code {proc.returncode}) before a worker-node trial reported 2 epochs")
        running = {t.name for t in (run / "trials").glob("*") if _status(t) == "running"}
        on_worker = _trials_on(cluster, "worker", running)
        ready = [n for n in on_worker if len(_metrics(run / "trials" / n)) >= 2]
        if ready:
            lost, lost_pid = ready[0], on_worker[ready[0]]
            break
        tick()
    worker_pids = cluster.pids("worker")
    reported = len(_metrics(run / "trials" / lost))
    t_kill = time.monotonic()
    cluster.stop_worker(force=True)     # SIGKILL: the node is gone, as a lost VM would be
    assert lost_pid in worker_pids and not cluster.pids("worker")

    # the sweep goes on on the head alone; note when the lost trial reports again (resumed)
    t_resumed = None
    while proc.poll() is None:
        if t_resumed is None and any("resumed_from_epoch" in m for m in _metrics(run / "trials" / lost)):
            t_resumed = time.monotonic()
        tick()
    t_end = time.monotonic()
    if proc.returncode != 0:
        fail(f"the sweep exited with {proc.returncode}")
    print(f"\nworker node killed at {t_kill - t0:.1f} s ({lost} had reported {reported} epochs); "
          f"{lost} reported again {(t_resumed or t_end) - t_kill:.1f} s later; sweep done at {t_end - t0:.1f} s")

    # the head noticed: one node left
    alive = cluster.wait_for_nodes(1, timeout=30)
    assert alive[0]["is_head_node"]

    # every trial accounted for: completed, every epoch once
    trials = sorted((run / "trials").iterdir())
    assert len(trials) == 4
    for t in trials:
        assert _status(t) == "completed", (t.name, (t / "status.json").read_text())
        assert [m["epoch"] for m in _metrics(t)] == list(range(1, EPOCHS + 1)), t.name

    # the lost trial went on from its last registered checkpoint (epoch >= reported - 1: one per epoch) ...
    metrics = _metrics(run / "trials" / lost)
    resumed = {m.get("resumed_from_epoch") for m in metrics if "resumed_from_epoch" in m}
    assert len(resumed) == 1, [(m["epoch"], m.get("resumed_from_epoch")) for m in metrics]
    frm = resumed.pop()
    assert frm >= max(1, reported - 1), (frm, reported)
    assert all(m.get("resumed_from_epoch") == frm for m in metrics if m["epoch"] > frm)
    # ... in a new process, on the head (the only node left): Tune's own result lines say which process
    res = _tune_results(run, lost)
    print(f"{lost}: Tune results (epoch, pid): {[(x['epoch'], x['pid']) for x in res]}; resumed from epoch {frm}")
    before = [x for x in res if x["pid"] == lost_pid]
    after = [x for x in res if x["pid"] != lost_pid]
    assert before and before[-1]["epoch"] >= frm and [x["epoch"] for x in before] == list(range(1, len(before) + 1))
    assert [x["epoch"] for x in after] == list(range(frm + 1, EPOCHS + 1))
    assert not any(x["pid"] in worker_pids for x in after)
    # no other trial ran on the lost node (the first trial there was killed at its second epoch)
    for t in trials:
        if t.name != lost:
            assert not any(x["pid"] in worker_pids for x in _tune_results(run, t.name)), t.name

    rows = list(csv.DictReader(open(run / "leaderboard.csv")))
    assert len(rows) == 4 and {r["trial_id"] for r in rows} == {t.name for t in trials}
    assert all(r["status"] == "completed" for r in rows)
    assert (run / "best" / "model.json").is_file()
    assert json.loads((run / "summary.json").read_text())["trials"] == 4
