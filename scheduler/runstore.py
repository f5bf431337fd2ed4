"""Where a run folder lives: a local folder, or a storage URL (``az://``, ``abfs://``, ``s3://`` ...).

``visionsweep run job.yml --output az://runs/my-sweep`` keeps the whole run on blob storage, so it
survives the loss of the node that ran the controller and ``visionsweep resume az://runs/my-sweep``
continues it from any machine:

* Ray Tune's experiment state and every trial checkpoint (``ray/sweep``; ``ray/train`` for
  data-parallel trials) are written by Ray straight to the storage URL, from whichever node holds them
  (Ray resolves only ``s3://``/``gs://`` itself; Azure Blob and every other fsspec backend go through
  ``storage_filesystem``, a pyarrow wrapper of the fsspec filesystem).
* The controller's own files (``trials/``, ``data/``, the leaderboard, ``best/``, the report, MLflow's
  database, ``summary.json``) are written to a local staging folder and mirrored to the URL after
  every trial event (on a background thread, coalesced) and at the end. ``resume`` first copies them
  back.

For a local run folder ``remote`` is ``None`` and everything is the plain folder, read through the same
fsspec calls, so the controller has one code path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.data import storage
from trainers.data.images import default_cache_dir
from trainers.data.urls import is_remote

log = logging.getLogger(__name__)
RAY = "ray"  # Ray's own storage under the run folder: written by Ray directly, never mirrored
SWEEP = "sweep"  # the Tune experiment under RUN/ray
TRAIN = "train"  # Ray Train runs of data-parallel trials under RUN/ray, one per trial id


def _backend_fs(url: str):
    """An fsspec filesystem with the backend's own retries (Ray's uploads do not go through ours)."""
    import fsspec


    storage.filesystem(url)  # a missing backend or bad credentials become one clear DataError here
    fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    return fs, path.rstrip("/")


@dataclass
class RunStore:
    local: Path  # the run folder on this machine (the staging copy when ``remote`` is set)
    remote: str | None = None  # the storage URL of the run folder
    _fs: Any = field(default=None, repr=False)
    _root: str = ""
    _sent: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _dirty: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def at(cls, output: str | Path) -> "RunStore":
        out = str(output)
        if not is_remote(out):
            local = Path(out.removeprefix("file://")).resolve()
            store = cls(local)
            import fsspec

            store._fs, store._root = fsspec.filesystem("file"), str(local)
            return store

        staging = Path(default_cache_dir()) / "runs" / hashlib.sha256(out.encode()).hexdigest()[:16]
        store = cls(staging, out.rstrip("/"))
        store._fs, store._root = _backend_fs(out)
        return store

    def __getstate__(self):  # Ray Tune pickles its callbacks with the experiment: no locks, threads or clients
        return {"local": self.local, "remote": self.remote}

    def __setstate__(self, state):
        # A run folder on storage is staged wherever it is unpickled (a resumed sweep's new machine).
        self.__dict__.update(RunStore.at(state["remote"] or state["local"]).__dict__)

    @property
    def where(self) -> str:
        """The run folder as the user named it."""
        return self.remote or str(self.local)

    # --- Ray's storage ---------------------------------------------------------------------------

    def ray_storage(self, sub: str = "") -> tuple[str, Any]:
        """``(storage_path, storage_filesystem)`` for Ray Tune / Ray Train under ``ray/<sub>``."""
        path = "/".join(p for p in (RAY, sub) if p)
        if self.remote is None:
            return str(self.local / path), None
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return f"{self._root}/{path}", PyFileSystem(FSSpecHandler(self._fs))

    def path(self, rel: str) -> str:
        """A path under the run folder, in the filesystem of :meth:`fs` (for Ray's files)."""
        return f"{self._root}/{rel}"

    @property
    def fs(self):
        return self._fs

    def exists(self, rel: str) -> bool:
        return self._fs.exists(self.path(rel))

    def glob(self, pattern: str, dirs_only: bool = False) -> list[str]:
        found = sorted(self._fs.glob(self.path(pattern)))
        return [p for p in found if self._fs.isdir(p)] if dirs_only else found

    def read_text(self, path: str) -> str:
        return self._fs.cat_file(path).decode()

    def download(self, path: str, dest: Path) -> None:
        """Copy a folder of Ray's storage (a checkpoint) to a local folder."""
        dest.mkdir(parents=True, exist_ok=True)
        for f in self._fs.find(path):
            rel = f[len(path):].lstrip("/")
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(self._fs.cat_file(f))

    # --- mirroring the controller's files --------------------------------------------------------

    def pull(self, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> int:
        """Copy the remote run folder's own files (not Ray's storage) into the staging folder: all of them, or
        those under the top-level names ``only``, less those under ``skip``."""
        if self.remote is None:
            return 0
        n = 0
        for f in self._fs.find(self._root):
            rel = f[len(self._root):].lstrip("/")
            top = rel.split("/", 1)[0]
            if not rel or top == RAY or top in skip or (only is not None and top not in only):
                continue
            dest = self.local / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self._fs.cat_file(f))
            st = dest.stat()
            self._sent[rel] = (st.st_size, st.st_mtime_ns)
            n += 1
        return n

    def push(self) -> int:
        """Upload the staging files that changed since the last push; returns how many."""
        if self.remote is None:
            return 0
        with self._lock:
            n = 0
            for p in sorted(self.local.rglob("*")):
                if not p.is_file():
                    continue
                rel = p.relative_to(self.local).as_posix()
                if rel.split("/", 1)[0] == RAY:
                    continue
                st = p.stat()
                key = (st.st_size, st.st_mtime_ns)
                if self._sent.get(rel) == key:
                    continue
                self._fs.pipe_file(self.path(rel), p.read_bytes())
                self._sent[rel] = key
                n += 1
            return n

    def changed(self) -> None:
        """Something in the staging folder changed: mirror it soon (coalesced, off the caller's thread)."""
        if self.remote is None:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="visionsweep-run-mirror", daemon=True)
            self._thread.start()
        self._dirty.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            self._dirty.clear()
            if self._stop.is_set():
                break
            try:
                self.push()
            except Exception as e:  # a storage hiccup must not stop the sweep; the final push retries
                log.warning("run folder not mirrored to %s yet: %s", self.remote, e)

    def close(self) -> None:
        """Stop the mirror thread and push what is left (the run's final files)."""
        if self._thread is not None:
            self._stop.set()
            self._dirty.set()
            self._thread.join()
            self._thread = None
        self.push()


def mirror_callback(store: RunStore):
    """A Ray Tune callback that mirrors the run folder after every trial event."""
    from ray.tune import Callback

    class _Mirror(Callback):
        def on_trial_start(self, *a, **k):
            store.changed()

        def on_trial_result(self, *a, **k):
            store.changed()

        def on_trial_complete(self, *a, **k):
            store.changed()

        def on_trial_error(self, *a, **k):
            store.changed()

    return _Mirror()


def checkpoints(store: RunStore, trial_id: str) -> list[str]:
    """A trial's checkpoints: Tune's (one-worker trials) or its Ray Train run's (data-parallel trials)."""
    # (Ray Train keeps a checkpoint_manager_snapshot.json next to its checkpoint folders)
    return [*store.glob(f"ray/{SWEEP}/{trial_id}/checkpoint_*", dirs_only=True),
            *store.glob(f"ray/{TRAIN}/{trial_id}/checkpoint_*", dirs_only=True)]


def best_checkpoint(store: RunStore, trial_id: str, primary: str) -> str | None:
    """The trial's checkpoint (a model package; its path in the store) with the best ``primary`` metric."""
    scored = []
    for ck in checkpoints(store, trial_id):
        try:
            value = json.loads(store.read_text(f"{ck}/metrics.json")).get(primary, -math.inf)
        except (FileNotFoundError, ValueError):
            continue
        scored.append((value, ck.rsplit("/", 1)[-1], ck))
    return max(scored)[2] if scored else None
