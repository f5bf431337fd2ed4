"""Readiness probes as SPEC §9.3 defines them: ``initial_delay`` (milliseconds), ``success_threshold`` and
``failure_threshold`` consecutive checks, ``period`` between checks, ``timeout`` per check (pure logic, a fake
clock: the router's ``serving.probes.ProbeState``)."""

from __future__ import annotations

from serving.probes import ProbeState


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_initial_delay_is_in_milliseconds_from_the_replicas_start():
    """The first check learns how long the replica has been up; checks within ``initial_delay`` (ms) do not
    count, and none is made until it has passed."""
    clock = Clock()
    p = ProbeState(initial_delay=2000, period=1, clock=clock)
    assert p.due()  # the replica's start is not known yet: ask it
    assert p.record(True, uptime_s=0.5) is False and p.reason == "starting"
    clock.t += 1.499
    assert not p.due()
    clock.t += 0.001
    assert p.due() and p.record(True, uptime_s=2.0) is True


def test_a_new_router_does_not_delay_a_deployment_that_runs_already():
    """Adding a deployment replaces the endpoint's router; its probes must not take the running deployments
    out of traffic for another ``initial_delay``."""
    p = ProbeState(initial_delay=2000, period=10, clock=Clock())
    assert p.record(True, uptime_s=600) is True


def test_ready_after_success_threshold_consecutive_successes():
    clock = Clock()
    p = ProbeState(success_threshold=3, failure_threshold=2, period=1, clock=clock)
    assert [p.record(ok) for ok in (True, True, False, True, True)] == [False] * 5  # the failure restarts the count
    assert p.record(True) is True and p.reason == "ready"


def test_not_ready_only_after_failure_threshold_consecutive_failures():
    clock = Clock()
    p = ProbeState(success_threshold=1, failure_threshold=3, period=1, timeout=2, clock=clock)
    assert p.record(True)
    assert p.record(False) and p.record(False)  # two failures: still ready
    assert p.record(True)  # a success resets the count
    assert p.record(False) and p.record(True, elapsed_s=5) is True  # a check over the timeout is a failure ...
    assert p.record(False) is False and p.reason == "check failed"  # ... the third in a row
    # before its first success, a failing deployment is simply not ready (no threshold to wait for)
    q = ProbeState(failure_threshold=10, clock=clock)
    assert q.record(False) is False


def test_checks_are_made_at_most_every_period():
    clock = Clock()
    p = ProbeState(period=10, clock=clock)
    assert p.due()
    p.record(True)
    clock.t += 9.9
    assert not p.due()
    clock.t += 0.1
    assert p.due()


def test_liveness_fails_serves_check_so_that_its_restart_comes_at_failure_threshold():
    """Serve restarts a replica after 3 failed health checks in a row (its constant): the replica's own count
    fails Serve's check from failure 28 of 30 on, so Serve's third failure in a row is the 30th."""
    from serving.probes import SERVE_RESTARTS_AFTER, Liveness

    live = Liveness(failure_threshold=30, clock=Clock())
    passed = [live.record(False) for _ in range(30)]
    assert passed.index(False) == 27 and passed[27:] == [False] * SERVE_RESTARTS_AFTER
    assert live.record(True) and live.failures == 0  # one good check: alive again (success_threshold 1)


def test_liveness_counts_nothing_within_initial_delay_and_needs_success_threshold_to_recover():
    from serving.probes import Liveness

    clock = Clock()
    live = Liveness(failure_threshold=3, success_threshold=2, initial_delay=2000, clock=clock)
    assert all(live.record(False) for _ in range(10)) and live.failures == 0  # starting: no check counts
    clock.t += 2.0
    assert live.record(False) is False  # failure_threshold 3 <= Serve's 3: Serve's calls fail from the first
    assert live.record(True) is False  # one success of two: still failing (Serve's count goes on)
    assert live.record(True) is True and live.failures == 0


def test_a_deployment_is_not_ready_while_no_replica_runs_whatever_the_router_says():
    """``deployment show`` / ``endpoint show`` combine Serve's replica states with the router's probe: the router
    holds its last check for ``period`` seconds, so during a rollout it can still say ready while Serve has stopped
    the only replica (the walkthrough's ``"replicas_running": 0 ... "ready": true``)."""
    from serving.endpoints import deployment_readiness

    rolling = {"replicas_running": 0, "replicas_target": 1, "status": "UPDATING"}
    assert deployment_readiness(rolling, {"ready": True, "reason": "ready"}) == {
        "ready": False, "reason": "no replica running (0/1; Serve: UPDATING)"}
    running = {"replicas_running": 1, "replicas_target": 2, "status": "UPDATING"}
    assert deployment_readiness(running, {"ready": True, "reason": "ready"}) == {"ready": True}
    assert deployment_readiness(running, {"ready": False, "reason": "starting"}) == {"ready": False,
                                                                                     "reason": "starting"}
    assert deployment_readiness(running, None) == {"ready": False, "reason": "the endpoint's router did not answer"}
