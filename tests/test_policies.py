"""Early-termination policies on scripted metric streams, no Ray (SPEC §8.4 and its worked examples)."""

from __future__ import annotations

import math

import pytest

from scheduler.policies import (
    BanditRule,
    Decision,
    MedianStoppingRule,
    TruncationSelectionRule,
    create_policy,
    list_policies,
)

C, S = Decision.CONTINUE, Decision.STOP


def feed(policy, streams: dict[str, list[float]], until: int | None = None) -> dict[str, list[Decision]]:
    """Interleave reports interval by interval (all trials report k before any reports k+1)."""
    out = {t: [] for t in streams}
    n = max(len(v) for v in streams.values()) if until is None else until
    for k in range(1, n + 1):
        for t, vals in streams.items():
            if len(vals) >= k and (not out[t] or out[t][-1] is C):
                out[t].append(policy.on_result(t, k, vals[k - 1]))
    return out


# --- evaluation points ------------------------------------------------------------------------

@pytest.mark.parametrize("interval,delay,points", [
    (1, 0, [1, 2, 3, 4, 5, 6]),
    (1, 5, [5, 6]),
    (2, 6, [6]),
    (2, 0, [2, 4, 6]),
])
def test_evaluation_points(interval, delay, points):
    p = MedianStoppingRule(evaluation_interval=interval, delay_evaluation=delay)
    assert [k for k in range(1, 7) if p.is_evaluation_point(k)] == points


def test_v2_sample_bandit_evaluates_at_6_8_10():
    p = BanditRule(slack_factor=0.2, evaluation_interval=2, delay_evaluation=6)
    assert [k for k in range(1, 12) if p.is_evaluation_point(k)] == [6, 8, 10]


# --- bandit -----------------------------------------------------------------------------------

def test_bandit_slack_factor_worked_example():
    # Applied at interval 10; best run reported 0.8; slack_factor 0.2 -> runs below 0.8/1.2 = 0.667 stop.
    p = BanditRule(slack_factor=0.2, evaluation_interval=10)
    assert p.threshold(0.8) == pytest.approx(0.6667, abs=1e-4)
    best, ok, bad = [0.5] * 9 + [0.8], [0.5] * 9 + [0.67], [0.5] * 9 + [0.66]
    d = feed(p, {"best": best, "ok": ok, "bad": bad})
    assert d["best"][-1] is C and d["ok"][-1] is C and d["bad"][-1] is S
    # no decision before the evaluation point
    assert all(x is C for x in d["bad"][:-1])


def test_bandit_uses_the_trials_best_so_far_not_its_last_value():
    p = BanditRule(slack_factor=0.1)
    feed(p, {"leader": [0.9, 0.9]})
    # dipped to 0.5 at interval 2, but its best so far (0.85) is above 0.9/1.1 = 0.818
    assert p.on_result("dipper", 1, 0.85) is C
    assert p.on_result("dipper", 2, 0.5) is C


def test_bandit_slack_amount():
    p = BanditRule(slack_amount=0.1, delay_evaluation=2)
    d = feed(p, {"a": [0.7, 0.8], "b": [0.7, 0.71], "c": [0.7, 0.69]})
    # threshold 0.8 - 0.1 = 0.7 at interval 2: 0.71 goes on, 0.69 stops
    assert d["a"] == [C, C] and d["b"] == [C, C] and d["c"] == [C, S]


def test_bandit_rejects_both_or_no_slack():
    with pytest.raises(ValueError, match="exactly one of slack_factor and slack_amount"):
        BanditRule(slack_factor=0.1, slack_amount=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        BanditRule()


# --- median stopping --------------------------------------------------------------------------

def test_median_stopping_at_interval_5():
    # MedianStoppingRule(evaluation_interval=1, delay_evaluation=5): at interval 5 a run stops if its
    # best so far is worse than the median of the running averages over intervals 1..5 of all runs.
    p = MedianStoppingRule(evaluation_interval=1, delay_evaluation=5)
    # Trials report asynchronously: the population is the trials that have reported interval k (§13 A9);
    # c reports interval 5 last, so it is compared with all three.
    streams = {
        "a": [0.5, 0.6, 0.7, 0.8, 0.9],    # average 0.70
        "b": [0.4, 0.5, 0.6, 0.6, 0.75],   # average 0.57
        "c": [0.2, 0.3, 0.3, 0.4, 0.45],   # average 0.33, best 0.45
    }
    d = feed(p, streams)
    # median of (0.70, 0.57, 0.33) = 0.57: a (best 0.9) and b (best 0.75) go on, c (best 0.45) stops
    assert d["a"][-1] is C and d["b"][-1] is C and d["c"][-1] is S
    assert all(x is C for x in d["c"][:4])  # nothing before the delay


def test_median_alone_never_stops_itself():
    p = MedianStoppingRule()
    assert all(p.on_result("solo", k, v) is C for k, v in enumerate([0.9, 0.1, 0.1, 0.1], start=1))


# --- truncation selection ---------------------------------------------------------------------

def test_truncation_selection_bottom_20_percent_at_interval_5():
    # TruncationSelectionRule(evaluation_interval=1, truncation_percentage=20, delay_evaluation=5)
    p = TruncationSelectionRule(truncation_percentage=20, evaluation_interval=1, delay_evaluation=5)
    values = {"t5": 0.5, "t4": 0.4, "t3": 0.3, "t2": 0.2, "t1": 0.1}  # t1 reports interval 5 last
    d = feed(p, {t: [0.0] * 4 + [v] for t, v in values.items()})
    # floor(5 * 20 / 100) = 1 run is cancelled: the worst at interval 5 (earlier reporters saw fewer runs:
    # floor(n * 0.2) = 0 for n < 5)
    assert [t for t in values if d[t][-1] is S] == ["t1"]


def test_truncation_ties_are_ranked_in_the_trials_favour():
    p = TruncationSelectionRule(truncation_percentage=50)
    # two equal trials: cutting 1 of 2 would be arbitrary, so neither is cut
    assert feed(p, {"a": [0.9], "b": [0.9]}) == {"a": [C], "b": [C]}
    # one strictly worse trial among three: it is the one cut
    assert p.on_result("c", 1, 0.5) is S


def test_truncation_rounds_down_and_may_cancel_none():
    p = TruncationSelectionRule(truncation_percentage=20)
    d = feed(p, {"a": [0.1], "b": [0.9]})  # floor(2 * 0.2) = 0
    assert d == {"a": [C], "b": [C]}


def test_truncation_exclude_finished_jobs():
    streams = {"f1": [0.1, 0.1], "f2": [0.2, 0.2], "f3": [0.3, 0.3], "f4": [0.4, 0.4]}
    keep, drop = TruncationSelectionRule(50), TruncationSelectionRule(50, exclude_finished_jobs=True)
    for p in (keep, drop):
        feed(p, streams)
        for t in streams:
            p.on_complete(t)
    # a new trial at 0.15 is in the bottom half of 5 (cut 2, only one is worse) when finished ones count ...
    assert keep.on_result("new", 1, 0.15) is S
    # ... and alone (nothing to rank against) when they are excluded
    assert drop.on_result("new", 1, 0.15) is C


# --- contract over every registered policy ----------------------------------------------------

def make(name):
    return create_policy(name, **({"slack_factor": 0.1} if name == "bandit" else
                                  {"truncation_percentage": 50} if name == "truncation_selection" else {}))


@pytest.mark.parametrize("name", [n for n in list_policies() if n != "asha"])
def test_contract_nan_stops_and_state_round_trips(name):
    p = make(name)
    feed(p, {"good": [0.5, 0.6], "other": [0.4, 0.5]})
    # a diverged trial (NaN) is stopped at its evaluation point; NaN never enters others' statistics
    assert p.on_result("nan", 1, math.nan) is S
    assert p.on_result("good", 3, 0.7) is C
    q = make(name)
    q.load_state_dict(p.state_dict())
    assert q.state_dict() == p.state_dict()
    assert q.on_result("late", 1, 0.0) == p.on_result("late", 1, 0.0)


@pytest.mark.parametrize("name", [n for n in list_policies() if n != "asha"])
def test_contract_a_repeated_interval_replaces_the_value(name):
    p = make(name)
    p.on_result("t", 1, 0.1)
    p.on_result("t", 2, 0.2)
    p.on_result("t", 2, 0.3)  # restored from a checkpoint, reports interval 2 again
    assert p.state_dict()["history"]["t"] == [0.1, 0.3]


def test_warm_start_history_counts_in_the_statistics():
    p = BanditRule(slack_factor=0.1)
    p.add_history("earlier-sweep/t1", [0.9, 0.95])
    # the earlier sweep's 0.9 at interval 1 makes 0.5 a clear loser on the first report
    assert p.on_result("new", 1, 0.5) is S


def test_unknown_policy_name():
    with pytest.raises(ValueError, match="early_termination.type .hyperband. is not a policy.*expected one of bandit"):
        create_policy("hyperband")
