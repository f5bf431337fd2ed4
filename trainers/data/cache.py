"""The node-local, size-bounded image cache shared by every trial (process) on one machine (SPEC §11.2).

Why a cache at all: a sweep runs many trials of many epochs over the same images. Without a cache each
of them would download every image again from remote storage; with it, one node downloads each image
once (non-streaming mode, :meth:`NodeCache.fill`) or keeps as many as fit (streaming mode,
:meth:`NodeCache.get`).

Design (one folder, no daemon, any number of processes):

* **Layout.** ``root/objects/<aa>/<sha256(url)>``, where ``<aa>`` is the first two hex digits (at most
  256 files per folder level, so listing stays cheap). Objects are keyed by a hash of their *URL*, not
  of their contents: a cache must know where to look before it has the bytes, and the bytes are
  unknown until they are fetched. Images in a training set are immutable for the job's lifetime, so a
  URL names one content.
* **No half files.** A new object is written to a temporary file in the same folder and moved into
  place with :func:`os.replace` (atomic within one file system). Readers see either no object or the
  whole object. Temporary names start with ``.tmp.`` and never look like an object.
* **A hard size bound, across processes.** Every change to what the cache holds (reserving room,
  evicting, committing, giving a reservation back) happens under one inter-process lock,
  ``fcntl.flock`` on ``root/.lock``. The running total (objects plus reservations of writes in
  progress) is kept in the ledger ``root/.size``, so a miss costs O(1) file operations, not a scan of
  the cache. A writer *reserves* its object's size under the lock before writing a byte, evicting
  least-recently-used objects until it fits; two writers therefore cannot both spend the same free
  space, and the bytes on disk never exceed ``max_bytes``. The reservation is the temporary file
  itself, created under the lock with its size in its name (``.tmp.<pid>.<bytes>.<token>``): a rescan
  of the folder (when the ledger is missing or unreadable, and on every eviction, which lists the
  objects anyway) recomputes the exact total, so the ledger heals itself after a crash; reservations
  of dead processes are dropped.
* **LRU by mtime.** A hit bumps the object's modification time (:func:`os.utime`); eviction removes
  the oldest first. Eviction frees a little more than asked (``EVICT_HEADROOM`` of the limit) so that
  a full cache in streaming mode lists its objects once per many misses, not on every miss.
* **Cheap hits.** A hit is an ``open`` + ``read`` + ``utime`` and never takes the lock. An object
  evicted between the check and the read is just a miss; one unlinked while being read is still read
  whole (POSIX keeps open files alive).
* **One fetch per object.** A miss holds ``root/.fetching/<first 3 hex digits of the key>`` (4096 striped
  ``flock`` files) while it fetches and stores, so concurrent trials that miss the same object fetch it
  once: the others wait, then read it. A hit takes no lock.
* **One download per node.** :meth:`NodeCache.fill` (non-streaming mode) holds ``root/.fill.lock``
  while it downloads: when several trials on a node start together, the first downloads and the
  others wait, then find every object present and fetch nothing.
* **The cache never fails training.** If the folder cannot be created or written (read-only, disk
  full, no permission), a warning is logged once per process and the cache degrades to fetch-only
  (objects already there are still read). ``fetch`` errors (the storage's own) propagate unchanged.

The root must be on a node-local file system: the locks and the dead-writer check (process ids) are
only meaningful within one machine. Objects are not fsynced: after a power loss the cache may hold a
damaged image, which the decoder reports; this is a cache, and the node's training restarts anyway.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from trainers.processes import pid_alive
from trainers.progress import Progress

log = logging.getLogger(__name__)

OBJECTS = "objects"
LOCK_FILE = ".lock"
FILL_LOCK_FILE = ".fill.lock"
FETCH_LOCKS = ".fetching"  # root/.fetching/<first 3 hex of the key>: held by a miss while it fetches
LEDGER_FILE = ".size"
TMP_PREFIX = ".tmp."
EVICT_HEADROOM = 0.05  # fraction of max_bytes freed beyond the need when evicting (amortises the listing)
STALE_TMP_S = 60.0  # a reservation of a dead process is dropped once its temp file is this old
ABANDONED_TMP_S = 3600.0  # ... and any reservation this old (the pid may have been reused)

_instances: dict[tuple[int, str, int], "NodeCache"] = {}
_instances_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A fork while another thread held the lock would leave it locked forever in the child.
    global _instances_lock
    _instances_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def ledger_bytes(root: str, strict: bool = False) -> int | None:
    """The bytes a cache folder holds by its ledger, ``None`` when there is none or it is damaged (the cache then
    rescans). ``strict``: other ``OSError``s propagate (the cache disables itself on them); else ``None``."""
    try:
        with open(os.path.join(root, LEDGER_FILE), "rb") as f:
            return int(f.read().decode("ascii").strip())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None  # torn or damaged: rescan
    except OSError:
        if strict:
            raise
        return None


def url_key(url: str) -> str:
    """The object name of ``url``: its SHA-256 in hex (the bytes are unknown before the fetch)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def _write_file(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a seam for tests that simulate a full disk mid-write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class NodeCache:
    """One process's handle on a node's cache folder; see the module docstring for the design.

    Use :meth:`open` (memoised per process), not the constructor: it is called for every image read.
    Thread-safe: the data loader's reader threads share one instance.
    """

    def __init__(self, root: str, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = os.path.abspath(root)
        self.max_bytes = int(max_bytes)
        self.objects = os.path.join(self.root, OBJECTS)
        self._counts = dict(hits=0, misses=0, fetches=0, evictions=0)
        self._counts_lock = threading.Lock()
        self._warned = False
        self._writable = True
        try:
            os.makedirs(self.objects, exist_ok=True)
            os.makedirs(os.path.join(self.root, FETCH_LOCKS), exist_ok=True)
            os.close(os.open(os.path.join(self.root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666))
        except OSError as e:
            self._disable(e, "cannot create or write the cache folder")

    @classmethod
    def open(cls, root: str, max_bytes: int) -> "NodeCache":
        """This process's cache at ``root`` (cheap after the first call: images call it per read).

        Memoised per ``(pid, root, max_bytes)``: a forked child gets its own instance, with its own
        counters, never its parent's open state.
        """
        key = (os.getpid(), os.path.abspath(root), int(max_bytes))
        inst = _instances.get(key)
        if inst is None:
            with _instances_lock:
                inst = _instances.get(key)
                if inst is None:
                    inst = _instances[key] = cls(root, max_bytes)
        return inst

    # ------------------------------------------------------------------ public API

    def path(self, url: str) -> str:
        """Where ``url``'s object lives (whether or not it is there)."""
        key = url_key(url)
        return os.path.join(self.objects, key[:2], key)

    def get(self, url: str, fetch: Callable[[], bytes]) -> bytes:
        """``url``'s bytes: from the cache on a hit, else ``fetch()`` (kept when it fits).

        A hit never takes the lock. Exceptions of ``fetch`` propagate unchanged; a failure of the
        cache itself never does (the fetched bytes are returned uncached).
        """
        data = self._read(url)
        if data is not None:
            self._count("hits")
            return data
        # One fetch per object per node: trials streaming the same images in the same order (the same
        # seed) would otherwise download each one twice. A miss holds a lock striped by key while it
        # fetches; a second trial missing the same object waits, then reads what the first stored.
        with self._flock(os.path.join(FETCH_LOCKS, url_key(url)[:3])) as locked:
            if locked:
                data = self._read(url)
                if data is not None:
                    self._count("hits")
                    return data
            self._count("misses")
            self._count("fetches")
            data = fetch()
            self._store(url, data)
        return data

    def fill(self, urls: Sequence[str], fetch: Callable[[str], bytes], threads: int) -> None:
        """Download every URL not cached yet, ``threads`` at a time (non-streaming mode, once per node).

        Holds ``root/.fill.lock`` throughout, so concurrent fills on one node (trials starting
        together) fetch each object once: the later ones wait, then find the objects present. The
        first ``fetch`` error cancels the downloads not started and propagates.
        """
        if not self._writable:
            return  # fetch-only: downloading now would only throw the bytes away; reads will fetch
        todo = list(dict.fromkeys(urls))
        with self._flock(FILL_LOCK_FILE) as locked:
            if not locked:
                return
            todo = [u for u in todo if not os.path.exists(self.path(u))]
            if not todo:
                return

            # a dataset's download takes minutes before the first trial trains: say how far along it is
            progress = Progress("downloading images into the node cache", len(todo))

            def one(url: str) -> bool:
                self._count("fetches")
                data = fetch(url)
                kept = self._store(url, data)
                progress.update(1, nbytes=len(data))
                return kept

            pool = ThreadPoolExecutor(max(1, min(threads, len(todo))), thread_name_prefix="cache-fill")
            with progress:
                try:
                    futures = [pool.submit(one, u) for u in todo]
                    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                    for f in done:
                        if f.exception() is not None:
                            raise f.exception()
                    kept = sum(f.result() for f in futures)
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
        if kept < len(todo):
            log.warning("node cache %s: kept %d of %d downloaded images (limit %d bytes); the rest will be "
                        "fetched again when read", self.root, kept, len(todo), self.max_bytes)

    def size_bytes(self) -> int:
        """Bytes on disk under ``objects/`` now: objects plus writes in progress (a scan; 0 if unreadable)."""
        total = 0
        try:
            for entry in self._entries():
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    pass
        except OSError:
            pass  # a report, not a decision: never fail on an unusable cache folder
        return total

    def stats(self) -> dict[str, int]:
        """``files`` and ``bytes`` the cache holds now (a scan; 0 if unreadable); ``hits``, ``misses``,
        ``fetches`` and ``evictions`` counted by this process since it opened the cache."""
        try:
            objs = self._scan_objects()
        except OSError:
            objs = []
        with self._counts_lock:
            counts = dict(self._counts)
        return dict(files=len(objs), bytes=sum(size for _, _, size in objs), **counts)

    # ------------------------------------------------------------------ internals

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += n

    def _disable(self, err: OSError, what: str) -> None:
        """Stop writing (fetch-only from now on in this process); warn once."""
        self._writable = False
        if not self._warned:
            self._warned = True
            log.warning("node cache %s: %s (%s); images will be fetched from storage without caching",
                        self.root, what, err)

    def _read(self, url: str) -> bytes | None:
        path = self.path(url)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:  # unreadable cache: behave as a miss, never fail the read
            if not self._warned:
                self._warned = True
                log.warning("node cache %s: cannot read %s (%s); fetching from storage", self.root, path, e)
            return None
        now = time.time_ns()  # explicit, fine-grained: the kernel's file clock ticks per jiffy
        try:
            os.utime(path, ns=(now, now))
        except OSError:
            pass  # evicted meanwhile, or a read-only cache: the read still counts
        return data

    @contextmanager
    def _flock(self, name: str) -> Iterator[bool]:
        """Hold an exclusive ``flock`` on ``root/<name>``; yields False (cache disabled) if impossible.

        A fresh open per acquisition: ``flock`` belongs to the open file description, so threads of
        one process exclude each other too, and a forked child never shares its parent's lock.
        """
        try:
            fd = os.open(os.path.join(self.root, name), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            self._disable(e, f"cannot open {name}")
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                self._disable(e, f"cannot lock {name}")
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def _store(self, url: str, data: bytes) -> bool:
        """Keep ``data`` as ``url``'s object if it fits; True when it is in the cache afterwards."""
        n = len(data)
        if n > self.max_bytes or not self._writable:
            return False
        final = self.path(url)
        tmp = None
        try:
            with self._flock(LOCK_FILE) as locked:
                if not locked or os.path.exists(final):
                    return locked
                tmp = self._reserve(final, n)
            if tmp is None:
                return False  # other writers' reservations hold the space now
            fd = os.open(tmp, os.O_WRONLY)
            try:
                _write_file(fd, data)
            finally:
                os.close(fd)
            now = time.time_ns()
            os.utime(tmp, ns=(now, now))
            with self._flock(LOCK_FILE) as locked:
                if not locked:
                    self._give_back(tmp, n)
                    return False
                if os.path.exists(final):  # another process stored it meanwhile: keep theirs
                    self._release(tmp, n)
                else:
                    os.replace(tmp, final)
                tmp = None
            return True
        except OSError as e:
            if tmp is not None:
                self._give_back(tmp, n)
            self._disable(e, "cannot store an object")
            return False

    def _give_back(self, tmp: str, n: int) -> None:
        """Remove a failed write's temp file and return its reservation (best effort)."""
        try:
            with self._flock(LOCK_FILE) as locked:
                if locked:
                    self._release(tmp, n)
                    return
        except OSError:
            pass
        try:  # no lock: the next rescan drops the reservation once the file is gone
            os.unlink(tmp)
        except OSError:
            pass

    def _release(self, tmp: str, n: int) -> None:
        """Under the lock: drop a reservation (its temp file and its bytes in the ledger)."""
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        total = self._read_ledger()
        self._write_ledger(self._rescan() if total is None else max(0, total - n))

    def _reserve(self, final: str, n: int) -> str | None:
        """Under the lock: make room for ``n`` bytes and create the temp file that holds the reservation.

        Returns the temp path, or None when ``n`` bytes cannot be freed (writes in progress hold them).
        """
        total = self._read_ledger()
        if total is None:
            total = self._rescan()
        if total + n > self.max_bytes:
            total = self._evict(n)
        if total + n > self.max_bytes:
            self._write_ledger(total)
            return None
        folder = os.path.dirname(final)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}.{n}.{secrets.token_hex(6)}")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        self._write_ledger(total + n)
        return tmp

    def _evict(self, n: int) -> int:
        """Under the lock: remove least-recently-used objects until ``n`` more bytes fit; the new total.

        The total is recomputed from the listing (objects + live reservations), which also corrects
        any drift of the ledger. Frees ``EVICT_HEADROOM`` of the limit beyond the need, so the next
        misses of a full cache do not each list it again.
        """
        objs = sorted(self._scan_objects())  # (mtime_ns, path, size): oldest first
        total = sum(size for _, _, size in objs) + sum(size for _, size in self._scan_tmps(drop_stale=True))
        target = self.max_bytes - int(self.max_bytes * EVICT_HEADROOM)
        evicted = 0
        for _, path, size in objs:
            if total + n <= target:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            total -= size
            evicted += 1
        if evicted:
            self._count("evictions", evicted)
        return total

    def _rescan(self) -> int:
        """Under the lock: the exact total from the folder (ledger missing, unreadable or suspect)."""
        return (sum(size for _, _, size in self._scan_objects())
                + sum(size for _, size in self._scan_tmps(drop_stale=True)))

    def _scan_objects(self) -> list[tuple[int, str, int]]:
        """``(mtime_ns, path, size)`` of every object."""
        out = []
        for entry in self._entries():
            if entry.name.startswith(TMP_PREFIX):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime_ns, entry.path, st.st_size))
        return out

    def _scan_tmps(self, drop_stale: bool = False) -> list[tuple[str, int]]:
        """``(path, reserved bytes)`` of every write in progress; with ``drop_stale`` (under the lock),
        temp files of dead writers are removed and not counted."""
        out = []
        now = time.time()
        for entry in self._entries():
            if not entry.name.startswith(TMP_PREFIX):
                continue
            try:
                _, pid, size, _ = entry.name.split(".", 4)[1:]
                pid, size = int(pid), int(size)
            except ValueError:
                pid, size = -1, 0
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            size = max(size, st.st_size)
            if drop_stale:
                age = now - st.st_mtime
                if age > STALE_TMP_S and (pid < 0 or age > ABANDONED_TMP_S or not pid_alive(pid)):
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        pass
                    continue
            out.append((entry.path, size))
        return out

    def _entries(self) -> Iterator[os.DirEntry]:
        """Every file under ``objects/``. Errors other than a vanished folder propagate: under the lock,
        a total that cannot be counted must stop the write, not be taken as zero."""
        try:
            folders = [e.path for e in os.scandir(self.objects) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return
        for folder in folders:
            try:
                with os.scandir(folder) as it:
                    yield from (e for e in it if e.is_file(follow_symlinks=False))
            except FileNotFoundError:
                continue

    def _read_ledger(self) -> int | None:
        return ledger_bytes(self.root, strict=True)

    def _write_ledger(self, total: int) -> None:
        """Under the lock: the new total (a damaged ledger is rescanned, so no temp file + rename)."""
        path = os.path.join(self.root, LEDGER_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            os.pwrite(fd, b"%020d" % total, 0)  # fixed width: one small write, never a mix of two values
            os.ftruncate(fd, 20)
        finally:
            os.close(fd)

