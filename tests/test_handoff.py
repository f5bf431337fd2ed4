"""The hand-off of a resumed sweep's Tune events (scheduler.handoff): the copy Tune unpickles passes each event to the
callback the resuming run started for the same key, exactly once, and never to another class's or another key's."""

from __future__ import annotations

import pickle
import threading
from types import SimpleNamespace

from ray.tune.callback import CallbackList

from scheduler.handoff import EVENTS, HandedOff


class Recorder(HandedOff):
    """A callback that records the events it handles; its lock stands for a thread or client (it cannot be pickled)."""

    transient = ("lock",)

    def __init__(self, key: str):
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.claim(key)

    def on_trial_start(self, iteration, trials, trial, **info):
        with self.lock:
            self.seen.append(("start", trial.trial_id))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        with self.lock:
            self.seen.append(("result", f"{trial.trial_id}@{result['epoch']}"))


class Other(Recorder):
    """Another callback class on the same run folder."""


def resumed(cb: HandedOff) -> HandedOff:
    """The copy Tune brings back with the experiment."""
    return pickle.loads(pickle.dumps(cb))


def result(events: CallbackList, trial: str, epoch: int) -> None:
    """A trial result as Tune's event loop delivers it (keywords only)."""
    events.on_trial_result(iteration=epoch, trials=[], trial=SimpleNamespace(trial_id=trial), result={"epoch": epoch})


def test_a_restored_callback_hands_each_event_to_the_resuming_runs_callback_once(tmp_path):
    first = Recorder(str(tmp_path))
    first.on_trial_start(iteration=0, trials=[], trial=SimpleNamespace(trial_id="a"))
    copy = resumed(first)  # the lock is left out of the pickle: pickling it would raise
    assert copy.restored and not first.restored and copy.lock is None and copy.handoff_key == str(tmp_path)
    first.release()  # the first run ended

    now = Recorder(str(tmp_path))  # the resuming run's own, which Tune is never given
    events = CallbackList([copy])
    events.on_trial_start(iteration=1, trials=[], trial=SimpleNamespace(trial_id="b"))
    result(events, "b", 1)
    result(events, "b", 2)
    assert now.seen == [("start", "b"), ("result", "b@1"), ("result", "b@2")]
    assert copy.seen == [("start", "a")]  # the snapshot's, untouched: nothing handled twice
    assert first.seen == [("start", "a")]
    events.on_step_begin(iteration=3, trials=[])  # a hook the class does not define stays Tune's no-op
    now.release()


def test_without_a_live_callback_a_restored_ones_events_are_dropped(tmp_path):
    first = Recorder(str(tmp_path / "a"))
    copy = resumed(first)
    first.release()
    elsewhere = Recorder(str(tmp_path / "b"))  # another run folder's
    other = Other(str(tmp_path / "a"))  # another class on the same folder
    assert copy.handler() is None
    result(CallbackList([copy]), "x", 1)
    assert copy.seen == [] and elsewhere.seen == [] and other.seen == [] and first.seen == []
    elsewhere.release()
    other.release()


def test_the_newest_claim_wins_and_an_older_release_keeps_it(tmp_path):
    key = str(tmp_path)
    old = Recorder(key)
    copy = resumed(old)
    new = Recorder(key)  # a second resume in the same driver
    old.release()  # the earlier run's end must not take the key from the newer run
    result(CallbackList([copy]), "t", 4)
    assert new.seen == [("result", "t@4")] and old.seen == []
    new.release()
    assert copy.handler() is None
    result(CallbackList([new]), "t", 5)  # a live callback handles its own events, released or not
    assert new.seen == [("result", "t@4"), ("result", "t@5")]


def test_every_tune_hook_is_handed_off():
    # read from Tune's own Callback: a hook a later Ray adds is handed off too
    assert {"setup", "on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error",
            "on_experiment_end", "on_checkpoint"} <= EVENTS
    assert not {"get_state", "set_state", "claim", "release", "handler"} & EVENTS
