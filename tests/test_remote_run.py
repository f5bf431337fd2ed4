"""A run folder on Azure Blob (Azurite): ``--output az://...``, then the controller's machine is lost and
``visionsweep resume az://...`` continues the sweep from another staging folder (SPEC §8.7)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.test_resume import sequential_grid_job, snapshot_shows

pytestmark = pytest.mark.ray

CLI = [sys.executable, "-m", "scheduler.cli"]


def _job(tmp_path, data) -> str:
    job = tmp_path / "job.yml"  # log_verbosity: debug must not turn on the storage SDK's request logs
    job.write_text(sequential_grid_job(data, epochs=4, extra="log_verbosity: debug\n"))
    return str(job)


def _remote_trials(fs, root):
    out = {}
    for f in fs.glob(f"{root}/trials/*/status.json"):
        tid = f.split("/")[-2]
        status = json.loads(fs.cat_file(f))
        lines = fs.cat_file(f"{root}/trials/{tid}/metrics.jsonl").decode().splitlines() \
            if fs.exists(f"{root}/trials/{tid}/metrics.jsonl") else []
        out[tid] = (status["status"], [json.loads(x) for x in lines if x.strip()])
    return out


def _interruptible(trials) -> tuple[str, str] | None:
    done = [t for t, (st, _) in trials.items() if st == "completed"]
    going = [t for t, (st, m) in trials.items() if st == "running" and len(m) >= 2]
    return (done[0], going[0]) if done and going else None


def test_run_folder_on_blob_survives_the_loss_of_the_controller(azurite, small_mltable, tmp_path):
    import adlfs

    azurite.create("runs")
    url, root = "az://runs/sweep", "runs/sweep"
    job = _job(tmp_path, small_mltable)
    with azurite.env():
        env = {**os.environ, "VISIONSWEEP_CACHE_DIR": str(tmp_path / "head-a")}
        fs = adlfs.AzureBlobFileSystem(connection_string=azurite.connection_string)
        proc = subprocess.Popen(CLI + ["run", job, "--output", url], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # one trial finished and the next two evaluations in, as seen on the blob store, and the snapshot
            # of Tune's state there (what a resume restores) has caught up with both
            while not (progress := _interruptible(_remote_trials(fs, root))) or not snapshot_shows(
                    [fs.cat_file(f).decode() for f in fs.glob(f"{root}/ray/sweep/experiment_state-*.json")],
                    *progress):
                assert proc.poll() is None, "the sweep ended before it could be interrupted"
                fs.invalidate_cache()
                try:
                    proc.wait(timeout=0.2)  # returns at once if the sweep ends
                except subprocess.TimeoutExpired:
                    pass
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the controller and its Ray die at once
            output = proc.communicate()[0].decode(errors="replace")
        shutil.rmtree(tmp_path / "head-a")  # ... and the machine's disk with them

        before = _remote_trials(fs, root)
        finished = {t: m for t, (st, m) in before.items() if st == "completed"}
        interrupted = [t for t, (st, m) in before.items() if st == "running"]
        assert finished and interrupted

        env = {**os.environ, "VISIONSWEEP_CACHE_DIR": str(tmp_path / "head-b")}
        out = subprocess.run(CLI + ["resume", url], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"run folder: {url}" in out.stdout
    fs.invalidate_cache()
    after = _remote_trials(fs, root)
    assert set(before) <= set(after) and len(after) == 3
    assert all(st == "completed" for st, _ in after.values()), ({t: (st, len(m)) for t, (st, m) in after.items()}, interrupted, out.stderr[-6000:])
    for tid, metrics in finished.items():  # kept as they were
        assert after[tid][1] == metrics
    resumed = after[interrupted[0]][1]
    assert [m["epoch"] for m in resumed] == [1, 2, 3, 4]
    assert any(m.get("resumed_from_epoch", 0) >= 1 for m in resumed)
    summary = json.loads(fs.cat_file(f"{root}/summary.json"))
    assert summary["trials"] == 3 and summary["best_package"] == f"{url}/best"
    assert fs.exists(f"{root}/best/model.safetensors") and fs.exists(f"{root}/report.html")
    # the account key is in no file of the run folder and in no output; log_verbosity: debug did not
    # turn on the storage SDK's request logs
    key = azurite.account_key.encode()
    for f in fs.find(root):
        assert key not in fs.cat_file(f), f
    assert azurite.account_key not in output + out.stdout + out.stderr
    assert "Request URL" not in output + out.stderr
