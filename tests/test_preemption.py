"""Preemption without lost work (issue 30, trainers/preemption.py): a trial whose node is told to leave stops at the
next optimiser step with a step checkpoint, and the restarted trial goes on from that step, not from its last
evaluation, and ends where an uninterrupted trial ends.

The loop-level tests give the engine a notice that is set after a number of steps (what ``LeaveNotice`` does when
the GCS lists the node as draining) and a real ``StepStore`` on a local folder; the cluster test drains a node of a
real autoscaling cluster with Ray's drain API (tests/test_autoscaling.py's cluster)."""

from __future__ import annotations

import textwrap

import pytest
import torch
from safetensors.torch import load_file

from trainers import hyperparameters as hp
from trainers.data import prepare_data
from trainers.engine import TRAINER_STATE, train
from trainers.hyperparameters import resolve_hyperparameters
from trainers.preemption import Preempted, StepStore

# resnet18 has no dropout: its steps are a function of the weights and the batches, so the resumed trial must end
# with the weights of the uninterrupted one
FAST = {"model_name": "resnet18", "training_crop_size": 32, "validation_resize_size": 32,
        "validation_crop_size": 32, "training_batch_size": 8, "validation_batch_size": 32, "number_of_epochs": 2,
        "optimizer": "adamw", "learning_rate": 0.001, "early_stopping": False, "checkpoint_frequency": 1}


class StepsThenLeave:
    """A notice that is set once ``after`` optimiser steps have been asked about (the engine asks at each)."""

    def __init__(self, after: int):
        self.after, self.asked, self.noticed_at = after, 0, None

    def is_set(self) -> bool:
        self.asked += 1
        return self.asked >= self.after


@pytest.fixture
def data(small_mltable):
    return prepare_data(hp.MULTICLASS, "label", str(small_mltable), None, 0.2, 0)


def _train(data, tmp_path, name, **kw):
    h = resolve_hyperparameters(data.task, FAST, {})
    reports = []

    def report(m, save):
        folder = tmp_path / name / f"epoch{m['epoch']}"
        if save:
            save(str(folder))
        reports.append((m, folder))

    train(h, data, report, device="cpu", **kw)
    return reports


def test_a_trial_told_to_leave_stops_at_the_next_step_and_goes_on_from_it(data, tmp_path):
    torch.manual_seed(0)
    whole = _train(data, tmp_path, "whole")
    steps_per_epoch = torch.load(whole[0][1] / TRAINER_STATE, weights_only=True)["scheduler"]["last_epoch"]
    assert steps_per_epoch >= 4

    # told to leave in epoch 2, a few steps in: it stops at that step with a step checkpoint, reporting nothing
    store = StepStore(str(tmp_path / "storage"), None, "trial_1")
    at = steps_per_epoch + 3
    with pytest.raises(Preempted, match=f"optimiser step {at} \\(epoch 2, batch 3 of {steps_per_epoch}\\)"):
        _train(data, tmp_path, "first", leave=StepsThenLeave(at), steps=store)
    assert store.exists()

    # the restart resumes from its last evaluation's checkpoint (epoch 1) plus the step checkpoint
    first = _train(data, tmp_path, "again", resume_from=str(whole[0][1]), steps=store)
    (m,) = [m for m, _ in first]
    assert m["epoch"] == 2 and m["resumed_from_step"] == at and m["resumed_from_batch"] == 3
    assert m["resumed_from_epoch"] == 1 and m["resumed_after_s"] >= 0
    assert not store.exists(), "the step checkpoint is cleared once the trial has reported past it"
    # nothing trained twice, nothing left out: the same weights and the same epoch loss as without the notice
    ref, got = load_file(whole[-1][1] / "model.safetensors"), load_file(first[-1][1] / "model.safetensors")
    assert ref.keys() == got.keys()
    assert all(torch.allclose(ref[k], got[k], atol=1e-5) for k in ref), "the resumed trial trained other steps"
    assert m["train_loss"] == pytest.approx(whole[-1][0]["train_loss"], rel=1e-4)
    final = torch.load(first[-1][1] / TRAINER_STATE, weights_only=True)
    assert final["scheduler"]["last_epoch"] == 2 * steps_per_epoch


def test_a_step_checkpoint_older_than_the_last_evaluation_is_not_used(data, tmp_path):
    """A trial that reported past its step checkpoint (then failed for another reason) goes on from its evaluation."""
    torch.manual_seed(0)
    store = StepStore(str(tmp_path / "storage"), None, "trial_1")
    with pytest.raises(Preempted):
        _train(data, tmp_path, "first", leave=StepsThenLeave(2), steps=store)  # in epoch 1
    whole = _train(data, tmp_path, "whole")
    resumed = _train(data, tmp_path, "again", resume_from=str(whole[-1][1]), steps=store)
    assert resumed == [] and store.exists()  # epoch 2 was the last: nothing left to train, the old one ignored


@pytest.mark.ray
def test_a_preempted_trial_is_restarted_without_using_up_its_retries(ray_session, tmp_path):
    """Tune restarts a trial that stopped for its node's notice (``Preempted``) as it does one whose process a
    preempted node took: without counting a failure. With no retries at all (``trial_retries: 0``) a trial
    preempted twice still goes on, and a real error still ends it at once."""
    from ray import tune

    attempts = tmp_path / "attempts"

    def trainable(config):
        n = len(attempts.read_text()) if attempts.exists() else 0
        attempts.write_text("x" * (n + 1))
        tune.report({"attempt": n + 1})
        if n < 2:
            raise Preempted("the node is leaving")
        if config["fail"]:
            raise ValueError("a real error")

    results = {}
    for fail in (False, True):
        attempts.unlink(missing_ok=True)
        grid = tune.Tuner(trainable, param_space={"fail": fail}, run_config=tune.RunConfig(
            storage_path=str(tmp_path / f"tune-{fail}"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=0))).fit()
        results[fail] = (grid[0].metrics.get("attempt"), type(grid[0].error).__name__ if grid[0].error else None)
    assert results[False] == (3, None)  # two preemptions, then it finished
    assert results[True][0] == 3 and results[True][1] is not None  # the real error counted: no retry left
    p = Preempted("stopped at optimiser step 7")
    assert p.preempted and str(p) == "stopped at optimiser step 7"


# On the node that gets SIGTERM: a process holding a CPU of it, with the leave notice of its node; prints when the
# notice is set. (Run by the test below in a process of its own: this one may hold another Ray.)
PROBE = textwrap.dedent("""
    import json, sys, time
    import ray
    ray.init(address=sys.argv[1], logging_level="ERROR")

    @ray.remote(num_cpus=1, resources={"leaving": 1})
    class Trial:
        def __init__(self):
            from trainers.preemption import LeaveNotice
            self.notice = LeaveNotice.of_this_node()
        def ready(self):
            return self.notice.spot
        def wait(self):
            while not self.notice.is_set():
                time.sleep(0.05)
            return time.time(), self.notice.deadline_ms

    trial = Trial.remote()
    print(json.dumps({"spot": ray.get(trial.ready.remote(), timeout=300)}), flush=True)
    at, deadline_ms = ray.get(trial.wait.remote(), timeout=300)  # (a notice that never comes fails the test)
    print(json.dumps({"noticed_at": at, "deadline_ms": deadline_ms}), flush=True)
""")


def _json_line(proc) -> dict:
    """The next line of ``proc``'s stdout that is a JSON object ({} at its end): Ray may print there too."""
    import json

    for line in proc.stdout:
        if line.startswith("{"):
            return json.loads(line)
    return {}


@pytest.mark.ray
def test_sigterm_to_a_nodes_ray_start_is_a_leave_notice(tmp_path):
    """A VM shut down by its cloud, or a Kubernetes pod deleted, gets SIGTERM; its Ray node runs as
    ``ray start --block``, which Ray then drains with the preemption reason for up to
    ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S`` before it stops. The trial on it sees the same leave notice as for a
    drain through the API (and checkpoints at its next step, as tests/test_autoscaling.py shows)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from cluster.autoscaling import AutoscalingLocalCluster
    from cluster.local import MARKER_ENV

    root = Path(__file__).resolve().parent.parent
    with AutoscalingLocalCluster(tmp_path / "cluster", root / "tests" / "fixtures" / "cluster" / "autoscaling.yaml") \
            as cluster:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"},
               **cluster.env()}
        node_env = {**env, MARKER_ENV: cluster.marker, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "20"}
        node = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--block",
                                 f"--address={cluster.address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                 '--resources={"leaving": 1}', "--labels=ray.io/market-type=spot",
                                 "--disable-usage-stats"], env=node_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        probe = subprocess.Popen([sys.executable, "-c", PROBE, cluster.address], env=env, cwd=root,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = _json_line(probe)  # the trial runs on the node
            assert first == {"spot": True}, probe.stderr.read()[-3000:]
            signalled = time.time()
            os.kill(node.pid, signal.SIGTERM)
            seen = _json_line(probe)
            assert seen, probe.stderr.read()[-3000:]
            assert seen["noticed_at"] >= signalled
            # the notice carries the drain's deadline: the time the trial has to checkpoint
            assert seen["deadline_ms"] / 1000 == pytest.approx(signalled + 20, abs=5)
            print(f"\nSIGTERM to `ray start --block` -> leave notice {seen['noticed_at'] - signalled:.2f} s")
            probe.kill()  # the trial gone, the drained node is idle and stops
            node.wait(timeout=120)
        finally:
            probe.kill()
            probe.wait()
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    assert not cluster.pids(), "a process of the cluster outlived stop()"
