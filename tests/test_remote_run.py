"""A run folder on Azure Blob (Azurite): ``--output az://...``, then the controller's machine is lost (the
controller, its Ray head and its disk) and ``visionsweep resume az://...`` continues the sweep from another machine's
staging folder (SPEC §8.7, issue 30): no finished trial lost, a running one losing only the epoch in flight."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.test_resume import sequential_grid_job, snapshot_shows

pytestmark = pytest.mark.ray

CLI = [sys.executable, "-m", "visionsweep.cli"]


def _job(tmp_path, data) -> str:
    job = tmp_path / "job.yml"  # log_verbosity: debug must not turn on the storage SDK's request logs
    # checkpoint_frequency 1: a checkpoint at every evaluation, so that a lost head costs a running trial at most
    # the evaluation period in flight (by default checkpoints go with improvements only, §6.1)
    job.write_text(sequential_grid_job(data, epochs=4, extra="log_verbosity: debug\n").replace(
        "  early_stopping: 0\n", "  early_stopping: 0\n  checkpoint_frequency: 1\n"))
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


def _snapshot_newest_checkpoint(states: list[str], trial: str) -> int:
    """The newest checkpoint index of ``trial`` in Tune's experiment-state snapshots on the store (-1: none)."""
    import re

    newest = -1
    for text in states:
        try:
            entries = json.loads(text)["trial_data"]
        except (ValueError, KeyError, TypeError):  # a snapshot being written
            continue
        for entry in entries:
            if json.loads(entry[0]).get("trial_id") == trial:
                newest = max([newest, *(int(n) for n in re.findall(r"checkpoint_(\d{6})", entry[1]))])
    return newest


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
        watch, live_page = None, b""
        try:
            # one trial finished and the next two evaluations in, as seen on the blob store, and the snapshot
            # of Tune's state there (what a resume restores) has caught up with both: with a checkpoint at every
            # evaluation, the snapshot holds the running trial's latest one (Tune snapshots after each checkpoint)
            seen_at: dict[int, float] = {}  # evaluations of the running trial on the store -> first seen
            while True:
                trials = _remote_trials(fs, root)
                progress = _interruptible(trials)
                if progress:
                    states = [fs.cat_file(f).decode() for f in fs.glob(f"{root}/ray/sweep/experiment_state-*.json")]
                    evaluated = len(trials[progress[1]][1])
                    seen_at.setdefault(evaluated, time.monotonic())
                    if snapshot_shows(states, *progress) and \
                            _snapshot_newest_checkpoint(states, progress[1]) == evaluated - 1:
                        print(f"\nthe snapshot held evaluation {evaluated}'s checkpoint "
                              f"{time.monotonic() - seen_at[evaluated]:.2f} s after its metrics were on the store")
                        break
                assert proc.poll() is None, "the sweep ended before it could be interrupted"
                if watch is None and any(m for _, m in _remote_trials(fs, root).values()):  # a first evaluation
                    # watched from another machine while it runs (beside it: the interruption point stays as
                    # it was): status and the live report read the blob store
                    watch = subprocess.Popen(CLI + ["status", url, "--json"], stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True,
                                             env={**env, "VISIONSWEEP_CACHE_DIR": str(tmp_path / "watcher")})
                    live_page = fs.cat_file(f"{root}/report.html")
                fs.invalidate_cache()
                try:
                    proc.wait(timeout=0.2)  # returns at once if the sweep ends
                except subprocess.TimeoutExpired:
                    pass
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the controller and its Ray die at once
            output = proc.communicate()[0].decode(errors="replace")
        assert watch is not None and b'id="live"' in live_page
        watched, watch_err = watch.communicate(timeout=300)
        assert watch.returncode == 0, watch_err[-3000:]
        st = json.loads(watched)  # the JSON alone on stdout
        assert st["state"] == "running" and st["total_trials"] == 3 and st["run"] == url
        assert any(t["latest"] is not None for t in st["trials"])  # a trial with an evaluation
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
    assert all(st == "completed" for st, _ in after.values()), ({t: (st, len(m)) for t, (st, m) in after.items()},
                                                                interrupted, out.stderr[-6000:])
    for tid, metrics in finished.items():  # kept as they were
        assert after[tid][1] == metrics
    resumed = after[interrupted[0]][1]
    assert [m["epoch"] for m in resumed] == [1, 2, 3, 4]
    # nothing evaluated before the loss is trained again: the trial goes on after its last evaluated epoch
    last_seen = max(m["epoch"] for m in before[interrupted[0]][1])
    assert [m["resumed_from_epoch"] for m in resumed if "resumed_from_epoch" in m] == \
        [last_seen] * (4 - last_seen), (last_seen, resumed)
    summary = json.loads(fs.cat_file(f"{root}/summary.json"))
    assert summary["trials"] == 3 and summary["best_package"] == f"{url}/best"
    assert fs.exists(f"{root}/best/model.safetensors") and fs.exists(f"{root}/report.html")
    assert b'id="live"' not in fs.cat_file(f"{root}/report.html")  # the final report, not a live one
    # the account key is in no file of the run folder and in no output; log_verbosity: debug did not
    # turn on the storage SDK's request logs
    key = azurite.account_key.encode()
    for f in fs.find(root):
        assert key not in fs.cat_file(f), f
    assert azurite.account_key not in output + out.stdout + out.stderr
    assert "Request URL" not in output + out.stderr

    # Every command that takes a run folder or a package takes its storage URL, from a machine that never held
    # the run (issue 18): the report is rewritten on the store, predict and export read best/ from it, and a new
    # job starts from its best model (checkpoint_run_id) and warm-starts from its trials (resume_from).
    image = str(next((small_mltable / "images").iterdir()))
    with azurite.env():
        env = {**os.environ, "VISIONSWEEP_CACHE_DIR": str(tmp_path / "laptop")}
        fs.rm(f"{root}/report.html")
        rep = subprocess.run(CLI + ["report", url], env=env, capture_output=True, text=True, timeout=300)
        assert rep.returncode == 0, rep.stderr[-3000:]
        assert rep.stdout.strip() == f"{url}/report.html"
        fs.invalidate_cache()
        assert b"visionsweep report" in fs.cat_file(f"{root}/report.html")
        assert not list((tmp_path / "laptop").rglob("model.safetensors"))  # the report staged no model

        pred = subprocess.run(CLI + ["predict", f"{url}/best", image], env=env, capture_output=True, text=True,
                              timeout=300)
        assert pred.returncode == 0, pred.stderr[-3000:]
        assert sorted(json.loads(pred.stdout)[0]["labels"]) == ["Bag", "Sneaker", "Trouser"]

        exp = subprocess.run(CLI + ["export", f"{url}/best"], env=env, capture_output=True, text=True, timeout=300)
        assert exp.returncode == 0, exp.stderr[-3000:]
        assert exp.stdout.startswith(f"wrote {url}/best/model.onnx and {url}/best/model.onnx.json")
        fs.invalidate_cache()
        assert fs.exists(f"{root}/best/model.onnx") and fs.exists(f"{root}/best/model.onnx.json")

        again = tmp_path / "again.yml"
        again.write_text(sequential_grid_job(small_mltable, epochs=1).replace(
            "max_trials: 3", "max_trials: 1").replace(
            "model_name: resnet18", f"model_name: resnet18\n  checkpoint_run_id: {url}").replace(
            "visionsweep: {pretrained: false,", f"visionsweep: {{resume_from: [{url}], pretrained: false,"))
        second = subprocess.run(CLI + ["run", str(again), "--output", str(tmp_path / "second")], env=env,
                                capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"weights: from checkpoint_run_id {url}/best" in second.stderr + second.stdout
    assert "warm start: 3 trial(s) from 1 earlier run(s)" in second.stderr + second.stdout
    assert list((tmp_path / "laptop" / "packages").iterdir())  # the model was fetched once to this node
