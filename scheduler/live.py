"""The live view of a running sweep: ``report.html`` rewritten while the trials run, and ``sweep.json``'s heartbeat.

A user who moves from a managed service expects to watch a sweep, not to wait for its end. ``LiveView`` is a Ray
Tune callback on the driver: every trial event marks the view stale, and a background thread rewrites the report
(marked live: it refreshes itself in the browser) at most every ``VISIONSWEEP_REPORT_S`` seconds (default 10),
so a burst of events costs one rewrite and Tune's event loop never waits for plotly. The same thread refreshes
``sweep.json``'s ``updated`` time, by which ``visionsweep status`` tells a running sweep from one whose controller
died. For a run folder on storage, each rewrite is mirrored to the URL like every other file.

The final report (not live) is written by ``finish_run`` after :meth:`LiveView.stop`, so a late live rewrite can
never replace it. ``sweep.json`` itself and the interval are the run folder's (``scheduler.runfolder``, which
``visionsweep status`` reads without importing Ray); only this callback imports Ray.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from scheduler.handoff import HandedOff
from scheduler.runfolder import report_interval_s, write_sweep_file

log = logging.getLogger(__name__)


class LiveView(HandedOff):
    """The view of one run folder, started with its sweep and stopped before the final report.

    Tune pickles its callbacks with the experiment and a resumed sweep runs the unpickled ones: an unpickled view
    starts no thread (nothing would stop it) but passes its events to the view the resuming run started for the
    same folder (``scheduler.handoff``)."""

    transient = ("_dirty", "_stopping", "_thread", "writes")

    def __init__(self, store: Any, interval_s: float | None = None):
        self.store = store  # a RunStore: .local is the folder written here, .changed() mirrors it
        self.interval_s = report_interval_s() if interval_s is None else interval_s
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self.writes = 0
        self._thread = threading.Thread(target=self._loop, name="visionsweep-live-report", daemon=True)
        self._thread.start()
        self._dirty.set()  # a first page at once: the user opens it while the first trial starts
        self.claim(self.store.where)

    def _loop(self) -> None:
        last = 0.0
        while not self._stopping.is_set():
            # wake on an event, or after an interval anyway for the heartbeat
            self._dirty.wait(timeout=max(self.interval_s, 1.0))
            if self._stopping.is_set():
                return
            wait = last + self.interval_s - time.monotonic()
            if wait > 0 and self._stopping.wait(wait):  # debounce: events in the meantime are one rewrite
                return
            stale = self._dirty.is_set()
            self._dirty.clear()
            last = time.monotonic()
            self._write(stale)

    def _write(self, stale: bool) -> None:
        from scheduler.report import write_report  # plotly: in the view's thread, not at import

        run_dir = Path(self.store.local)
        try:
            write_sweep_file(run_dir, updated=time.time())
            if stale:
                write_report(run_dir, live=True, refresh_s=self.interval_s)
                self.writes += 1
        except Exception as e:  # the view must never break the sweep
            log.warning("live report not written: %s", e)
        self.store.changed()

    def _event(self, *args, **kwargs) -> None:
        self._dirty.set()

    on_trial_start = on_trial_result = on_trial_complete = on_trial_error = _event

    def stop(self) -> None:
        """Stop rewriting (before the final report is written); waits for a rewrite in progress."""
        if self.restored:
            return  # it started no thread
        self._stopping.set()
        self._dirty.set()
        self._thread.join()
        self.release()
