"""Sweeps that save compute, on a real local Ray: early termination, ASHA, AutoMode, Bayesian, tracking, report.

The policy sweeps use two identical "good" trials (AdamW at learning_rate 0.001; training is seeded,
so both produce the same curve) and two "bad" ones (learning_rate 0: the weights never change), in
grid order good, bad, good, bad.

The spec's three policies run two trials at a time, the asynchronous case they exist for: which of two
concurrent trials reports an epoch first is up to the machine, so the test does not guess the outcome.
It replays the reports in the order the scheduler saw them (``report_seq``) through the spec's rules,
written out here from §8.4, and checks that every trial was stopped exactly where the rule says, and at
no other point. ASHA (Ray's) runs one trial at a time, where the outcome is fixed.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pytest

from scheduler.controller import run_job
from scheduler.runfolder import read_trials
from tests.test_sweep import make_job

pytestmark = pytest.mark.ray

GOOD_BAD = """\
limits:
  max_trials: 4
  max_concurrent_trials: %d
search_space:
  - model_name: {type: choice, values: [resnet18]}
    learning_rate: {type: choice, values: [0.001, 0.0, 0.001, 0.0]}
sweep:
  sampling_algorithm: grid
  early_termination: %s
"""

DELAY = 3
EPOCHS = 5
POLICIES = {
    "bandit": {"type": "bandit", "slack_factor": 0.2, "delay_evaluation": DELAY},
    "median_stopping": {"type": "median_stopping", "delay_evaluation": DELAY},
    "truncation_selection": {"type": "truncation_selection", "truncation_percentage": 67,
                             "delay_evaluation": DELAY},
}
TRAIN = "  optimizer: adamw\n  warmup_cosine_lr_warmup_epochs: 0\n"


def spec_rule(policy: dict, known: dict[str, dict[int, float]], trial: str, k: int) -> bool:
    """§8.4, straight from the spec: does ``trial`` stop at its k-th report, given every value known then?"""
    if k < policy.get("delay_evaluation", 0) or k % policy.get("evaluation_interval", 1):
        return False
    reached = {t: v for t, v in known.items() if k in v}
    best_so_far = max(v for i, v in known[trial].items() if i <= k)
    if policy["type"] == "bandit":  # c_r < B_k / (1 + slack_factor)
        return best_so_far < max(v[k] for v in reached.values()) / (1 + policy["slack_factor"])
    if policy["type"] == "median_stopping":  # best so far below the median of the running averages at k
        averages = [statistics.fmean(x for i, x in v.items() if i <= k) for v in reached.values()]
        return best_so_far < statistics.median(averages)
    # truncation_selection: in the lowest floor(n * p / 100) at k, ties ranked in the trial's favour
    n_cut = math.floor(len(reached) * policy["truncation_percentage"] / 100)
    better = sum(v[k] > known[trial][k] for v in reached.values())
    return n_cut > 0 and better >= len(reached) - n_cut


@pytest.mark.parametrize("policy", list(POLICIES))
def test_concurrent_trials_are_stopped_where_the_spec_rule_says(ray_session, small_mltable, tmp_path, policy):
    rule = POLICIES[policy]
    job = make_job(small_mltable, TRAIN + GOOD_BAD % (2, json.dumps(rule)), epochs=EPOCHS, batch=8)
    result = run_job(job, tmp_path / "run", echo=lambda s: None)
    trials = read_trials(tmp_path / "run")
    reports = sorted(((m["report_seq"], t.trial_id, m["epoch"], m["accuracy"]) for t in trials.values()
                      for m in t.metrics), key=lambda r: r[0])
    assert [r[0] for r in reports] == list(range(1, len(reports) + 1))  # every report, each once

    known: dict[str, dict[int, float]] = {}
    expected: dict[str, int] = {}  # trial -> the epoch the rule stops it at
    for _, tid, epoch, value in reports:
        assert tid not in expected, f"{tid} reported epoch {epoch} after the rule stopped it"
        known.setdefault(tid, {})[epoch] = value
        if epoch < EPOCHS and spec_rule(rule, known, tid, epoch):  # a stop at the last epoch is a finish
            expected[tid] = epoch
    recorded = {t.trial_id: t.metrics[-1]["epoch"] for t in trials.values() if t.status == f"stopped ({policy})"}
    assert recorded == expected
    # trials that learn are never stopped; with a finished learning trial to compare with, the last trial
    # (it cannot learn) is, whatever the order of the reports
    for t in trials.values():
        if t.params["learning_rate"] == 0.001:
            assert t.status == "completed" and len(t.metrics) == 5
    if policy != "median_stopping":  # the median of {good, bad, bad} spares a bad trial: no fixed outcome
        assert expected
    rows = {r["trial_id"]: r for r in result.rows}
    for tid, epoch in expected.items():
        assert rows[tid]["status"] == f"stopped ({policy})" and rows[tid]["epochs_run"] == epoch < EPOCHS
    assert result.best_trial in {t.trial_id for t in trials.values() if t.params["learning_rate"] == 0.001}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_early"] == len(expected)


def test_asha_stops_the_trials_that_trail_at_its_rungs(ray_session, small_mltable, tmp_path):
    job = make_job(small_mltable, TRAIN + GOOD_BAD % (1, "{type: asha, grace_period: 3, reduction_factor: 2}"),
                   epochs=5, batch=8)
    result = run_job(job, tmp_path / "run", echo=lambda s: None)
    trials = read_trials(tmp_path / "run")
    by_lr = {0.001: [], 0.0: []}
    for rec in trials.values():
        by_lr[rec.params["learning_rate"]].append(rec)
    # the learning trials run all their epochs
    assert all(r.status == "completed" and len(r.metrics) == 5 for r in by_lr[0.001])
    # both trials that never learn are stopped early at the rung (epoch 3), and marked with its name
    stopped = [r for r in by_lr[0.0] if r.status == "stopped (asha)" and len(r.metrics) < 5]
    assert len(stopped) == 2, [(r.status, len(r.metrics)) for r in by_lr[0.0]]
    rows = {r["trial_id"]: r for r in result.rows}
    for r in stopped:
        assert rows[r.trial_id]["status"] == "stopped (asha)"
        assert rows[r.trial_id]["epochs_run"] == r.metrics[-1]["epoch"] < 5
    assert result.best_trial in {r.trial_id for r in by_lr[0.001]}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_early"] == 2 and summary["trial_epochs"] < 20


def test_automode_runs_and_explains_its_choices(ray_session, small_mltable, mobilenet_weights, tmp_path):
    # the only pretrained weights this machine has: torchvision's MobileNetV2 file, in a weights store
    job = make_job(small_mltable, f"limits: {{max_trials: 4, max_concurrent_trials: 2}}\n"
                                  f"visionsweep: {{weights_store: {mobilenet_weights.parent}}}\n", epochs=4,
                   pretrained=True)
    assert job.mode == "automode"
    result = run_job(job, tmp_path / "run", echo=lambda s: None)
    plan = json.loads((tmp_path / "run" / "automode.json").read_text())
    # on a CPU-only cluster: the first candidate whose weights can be had (ResNet-18 has none here: left out,
    # saying why), the first trial with its family's first fine-tuning recipe
    assert plan["hardware"] == "cpu" and [m["model_name"] for m in plan["models"]] == ["mobilenetv2"]
    first = {"model_name": "mobilenetv2", "optimizer": "adamw", "learning_rate": 3e-4}
    assert plan["first_trial"]["config"] == first and plan["models"][0]["why"]
    left = {m["model_name"]: m["why"] for m in plan["left_out"]}
    assert "resnet18-f37072fd.pth is in none of" in left["resnet18"] and plan["not_in_the_cpu_portfolio"]
    assert plan["asha"]["max_epochs"] == 4
    trials = read_trials(tmp_path / "run")
    assert len(trials) == 4 and len(result.rows) == 4
    # one trial at the recipe (the searcher's first suggestion; two trials start together, so their start
    # times do not tell which came first), the others sampled from the recipes' ranges
    firsts = [r for r in trials.values() if r.params == first]
    assert len(firsts) == 1
    for r in trials.values():
        if r is not firsts[0]:
            sgd = r.params["optimizer"] == "sgd"
            assert set(r.params) == {"model_name", "optimizer", "learning_rate", "weight_decay"} | (
                {"momentum"} if sgd else set())
            assert (0.003 if sgd else 1e-4) <= r.params["learning_rate"] <= (0.03 if sgd else 2e-3)


def test_bayesian_sweep_tracking_and_report(ray_session, small_mltable, tmp_path):
    from mlflow.tracking import MlflowClient

    job = make_job(small_mltable, """\
  random_seed: 1
limits: {max_trials: 3, max_concurrent_trials: 1}
search_space:
  - model_name: {type: choice, values: [resnet18]}
    learning_rate: {type: uniform, min_value: 0.001, max_value: 0.1}
sweep: {sampling_algorithm: bayesian}
display_name: Bayesian sweep of ResNet-18
description: three trials, one tuned learning rate
tags: {team: vision, sweep_kind: bayesian}
visionsweep:
  tracking: {register_model: demo-classifier}
""", epochs=2)
    notes = []
    result = run_job(job, tmp_path / "run", echo=notes.append)
    assert len(result.rows) == 3 and result.best_trial
    assert any("works best with at least 20 trials" in n for n in notes)  # 20 x 1 tuned parameter

    # MLflow: a parent run for the sweep, a child run per trial with per-epoch metrics
    tracking = json.loads((tmp_path / "run" / "tracking.json").read_text())
    client = MlflowClient(tracking["uri"])
    parent = client.get_run(tracking["parent"])
    assert parent.data.tags["best_trial"] == result.best_trial
    # the job's display name, description and tags are the parent run's name, note and tags, and in run.json
    assert parent.info.run_name == "Bayesian sweep of ResNet-18"
    assert parent.data.tags["mlflow.note.content"] == "three trials, one tuned learning rate"
    assert parent.data.tags["team"] == "vision" and parent.data.tags["sweep_kind"] == "bayesian"
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["tags"] == {"team": "vision", "sweep_kind": "bayesian"} and meta["display_name"].startswith("Bayesian")
    assert parent.data.metrics["best_accuracy"] == pytest.approx(result.best_metric)
    children = client.search_runs([tracking["experiment_id"]],
                                  filter_string=f"tags.mlflow.parentRunId = '{tracking['parent']}'")
    assert len(children) == 3
    for child in children:
        history = client.get_metric_history(child.info.run_id, "accuracy")
        assert [m.step for m in history] == [1, 2] and "learning_rate" in child.data.params
    artifacts = {a.path for a in client.list_artifacts(tracking["parent"], "best_model")}
    assert "best_model/model.safetensors" in artifacts
    versions = client.search_model_versions("name = 'demo-classifier'")
    assert len(versions) == 1

    # the HTML report: one curve per trial
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("trial") and all(t in html for t in (r["trial_id"] for r in result.rows))


def test_warm_start_changes_the_bayesian_searchers_first_suggestion(tmp_path):
    from pydantic import TypeAdapter

    from scheduler.bayesian import make_searcher
    from scheduler.space import Distribution
    from scheduler.warmstart import load_prior_trials

    # an earlier run folder whose best trials all had learning_rate close to 0.09
    old = tmp_path / "old"
    for i, (lr, acc) in enumerate([(0.09, 0.9), (0.088, 0.88), (0.002, 0.2), (0.005, 0.25), (0.05, 0.5)]):
        d = old / "trials" / f"t{i}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"learning_rate": lr}))
        (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "accuracy": acc / 2}) + "\n" +
                                         json.dumps({"epoch": 2, "accuracy": acc}) + "\n")
    priors = load_prior_trials([str(old)], "accuracy")
    assert len(priors) == 5 and priors[0].best == 0.9
    space = [{"learning_rate": TypeAdapter(Distribution).validate_python(
        {"type": "uniform", "min_value": 0.001, "max_value": 0.1})}]
    cold = [make_searcher(space, "accuracy", seed=3, max_trials=10).suggest(f"c{i}") for i in range(3)]
    warm_searcher = make_searcher(space, "accuracy", seed=3, max_trials=10, priors=priors)
    warm = [warm_searcher.suggest(f"w{i}") for i in range(3)]
    assert warm != cold
    # TPE pulls the first suggestions towards the good region of the earlier sweep
    assert sum(abs(c["learning_rate"] - 0.09) for c in warm) < sum(abs(c["learning_rate"] - 0.09) for c in cold)


def test_warm_start_histories_feed_the_policy(ray_session, small_mltable, tmp_path):
    # A first sweep of one good trial; a second sweep of one bad trial warm-started from it: the bandit
    # policy compares the bad trial with the earlier sweep's history and stops it.
    first = make_job(small_mltable, TRAIN + "  model_name: resnet18\n  learning_rate: 0.001\n", epochs=3, batch=8)
    run_job(first, tmp_path / "first", echo=lambda s: None)
    second = make_job(small_mltable, TRAIN + f"""\
  model_name: resnet18
limits: {{max_trials: 1}}
search_space:
  - learning_rate: {{type: choice, values: [0.0]}}
sweep:
  sampling_algorithm: random
  early_termination: {{type: bandit, slack_factor: 0.2, delay_evaluation: 3}}
visionsweep:
  resume_from: [{tmp_path / 'first'}]
  tracking: {{enabled: false}}
""", epochs=5, batch=8)
    result = run_job(second, tmp_path / "second", echo=lambda s: None)
    assert result.rows[0]["status"] == "stopped (bandit)" and result.rows[0]["epochs_run"] == 3


def test_incremental_training_starts_from_an_earlier_package(ray_session, small_mltable, tmp_path):
    first = make_job(small_mltable, "  learning_rate: 0.05\n  model_name: resnet18\n", epochs=3)
    r1 = run_job(first, tmp_path / "first", echo=lambda s: None)
    second = make_job(small_mltable, f"  learning_rate: 0.0\n  checkpoint_run_id: {tmp_path / 'first'}\n", epochs=1)
    r2 = run_job(second, tmp_path / "second", echo=lambda s: None)
    assert r2.rows[0]["model_name"] == "resnet18"
    # learning_rate 0: the second run's weights are the package's, exactly (its BatchNorm running statistics do
    # move, with the epoch's batches: its accuracy need not be the first run's, so weights are compared, not it)
    from safetensors.torch import load_file

    w1, w2 = (load_file(str(r.run_dir / "best" / "model.safetensors")) for r in (r1, r2))
    weights = [k for k in w1 if "running_" not in k and "num_batches_tracked" not in k]
    assert w1.keys() == w2.keys() and all(w1[k].equal(w2[k]) for k in weights)
    assert weights and not all(w1[k].equal(w2[k]) for k in w1)  # the statistics did move: it trained an epoch


def test_report_command_rewrites_the_report(tmp_path):
    import subprocess
    import sys

    d = tmp_path / "run" / "trials" / "t1"
    d.mkdir(parents=True)
    (d / "params.json").write_text('{"learning_rate": 0.1}')
    (d / "metrics.jsonl").write_text('{"epoch": 1, "accuracy": 0.5}\n')
    (d / "status.json").write_text('{"status": "completed"}')
    (tmp_path / "run" / "job.resolved.yaml").write_text("primary_metric: accuracy\n")
    out = subprocess.run([sys.executable, "-m", "visionsweep.cli", "report", str(tmp_path / "run")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and Path(out.stdout.strip()).name == "report.html"
    assert re.search(r"t1", (tmp_path / "run" / "report.html").read_text())
