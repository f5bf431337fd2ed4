"""The node-local image cache (trainers.data.cache): local files only, no Ray, a few seconds in all.

Concurrency tests use forked processes synchronised by events and barriers (no sleeps, no timing
assertions); their join timeouts only keep a broken implementation from hanging the suite.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import multiprocessing
import os
import random
import time
import traceback
from contextlib import contextmanager

import pytest

from trainers.data import cache as cache_mod
from trainers.data.cache import NodeCache

mp = multiprocessing.get_context("fork")
JOIN_S = 120  # hang guard only


def blob(url: str, size: int) -> bytes:
    """Deterministic bytes for ``url`` (so any reader can check what it got)."""
    seed = hashlib.sha256(url.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def files_under(root) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(os.path.join(root, "objects")):
        out += [os.path.join(dirpath, n) for n in names]
    return out


def disk_total(root) -> int:
    """Sum of the sizes of every file under objects/ (objects and temp files alike)."""
    total = 0
    for path in files_under(root):
        try:
            total += os.stat(path).st_size
        except FileNotFoundError:
            pass
    return total


def ledger(root) -> int:
    with open(os.path.join(root, ".size")) as f:
        return int(f.read())


@contextmanager
def cache_lock(root):
    """The cache's own inter-process lock: while held, no object appears, grows a reservation or goes."""
    fd = os.open(os.path.join(root, ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Fetcher:
    """A fetch function for ``get`` that counts its calls."""

    def __init__(self, data: bytes):
        self.data, self.calls = data, 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.data


def run_children(*procs, q=None) -> list:
    """Start ``procs``, collect one result each from ``q`` (before joining: a full pipe would block
    them), join; every child must exit 0."""
    for p in procs:
        p.start()
    results = [q.get(timeout=JOIN_S) for _ in procs] if q is not None else []
    for p in procs:
        p.join(JOIN_S)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs), results
    return results


# ---------------------------------------------------------------------------- basics


def test_miss_then_hit_counts_and_layout(tmp_path):
    c = NodeCache(str(tmp_path), 10_000)
    url = "az://container/images/cat.jpg"
    f = Fetcher(blob(url, 300))
    assert c.get(url, f) == f.data
    assert c.get(url, f) == f.data
    assert c.get(url, f) == f.data
    assert f.calls == 1
    assert c.stats() == dict(files=1, bytes=300, hits=2, misses=1, fetches=1, evictions=0)
    key = hashlib.sha256(url.encode()).hexdigest()
    path = tmp_path / "objects" / key[:2] / key
    assert c.path(url) == str(path)
    assert path.read_bytes() == f.data
    assert files_under(tmp_path) == [str(path)]  # no temp file left behind
    assert ledger(tmp_path) == 300 == c.size_bytes()


def test_open_is_memoised_per_process(tmp_path):
    a = NodeCache.open(str(tmp_path), 1000)
    assert NodeCache.open(str(tmp_path), 1000) is a
    assert NodeCache.open(str(tmp_path) + "/", 1000) is a  # same folder, same instance
    assert NodeCache.open(str(tmp_path), 2000) is not a
    q = mp.Queue()
    p = mp.Process(target=lambda: q.put(NodeCache.open(str(tmp_path), 1000) is a))
    assert run_children(p, q=q) == [False]  # a forked child opens its own (own counters, no shared lock state)


def test_lru_eviction_order_follows_use_not_insertion(tmp_path):
    c = NodeCache(str(tmp_path), 350)  # three 100-byte objects fit, a fourth does not
    data = {u: blob(u, 100) for u in "abcde"}
    for u in "abc":
        c.get(u, Fetcher(data[u]))
    assert c.get("a", Fetcher(b"")) == data["a"]  # hit: a becomes the most recently used
    c.get("d", Fetcher(data["d"]))  # evicts b, the least recently used
    assert [os.path.exists(c.path(u)) for u in "abcd"] == [True, False, True, True]
    assert c.get("c", Fetcher(b"")) == data["c"]  # now a is the oldest
    c.get("e", Fetcher(data["e"]))
    assert [os.path.exists(c.path(u)) for u in "abcde"] == [False, False, True, True, True]
    refetch = Fetcher(data["b"])
    assert c.get("b", refetch) == data["b"] and refetch.calls == 1  # evicted means fetched again
    s = c.stats()
    assert (s["evictions"], s["files"], s["bytes"]) == (3, 3, 300)
    assert ledger(tmp_path) == 300 == disk_total(tmp_path)


def test_object_bigger_than_the_cache_is_returned_not_stored(tmp_path):
    c = NodeCache(str(tmp_path), 100)
    small = Fetcher(blob("small", 60))
    c.get("small", small)
    big = Fetcher(blob("big", 150))
    assert c.get("big", big) == big.data
    assert c.get("big", big) == big.data and big.calls == 2  # never cached
    assert not os.path.exists(c.path("big"))
    assert os.path.exists(c.path("small"))  # nothing was evicted for an object that cannot fit
    assert c.stats()["evictions"] == 0
    assert ledger(tmp_path) == 60 == disk_total(tmp_path)


def test_missing_or_damaged_ledger_is_rebuilt_from_the_folder(tmp_path):
    c = NodeCache(str(tmp_path), 10_000)
    for u, n in (("a", 100), ("b", 200)):
        c.get(u, Fetcher(blob(u, n)))
    os.unlink(tmp_path / ".size")
    c.get("c", Fetcher(blob("c", 50)))
    assert ledger(tmp_path) == 350
    (tmp_path / ".size").write_text("garbage")
    c.get("d", Fetcher(blob("d", 25)))
    assert ledger(tmp_path) == 375 == disk_total(tmp_path)


def _dead_pid() -> int:
    p = mp.Process(target=lambda: None)
    p.start()
    p.join(JOIN_S)
    return p.pid


def test_reservations_of_dead_writers_are_dropped_live_ones_kept(tmp_path):
    c = NodeCache(str(tmp_path), 1000)
    c.get("a", Fetcher(blob("a", 100)))
    folder = tmp_path / "objects" / "00"
    folder.mkdir()
    # A live writer (this process) holds 500 bytes; a crashed one leaked 800 long ago.
    live = folder / f".tmp.{os.getpid()}.500.live"
    dead = folder / f".tmp.{_dead_pid()}.800.dead"
    live.write_bytes(b"x" * 10)
    dead.write_bytes(b"")
    old = time.time() - 2 * cache_mod.STALE_TMP_S
    os.utime(dead, (old, old))
    (tmp_path / ".size").write_text(str(100 + 500 + 800))  # what the ledger says after the crash

    f = Fetcher(blob("b", 300))
    assert c.get("b", f) == f.data
    assert os.path.exists(c.path("b"))  # stored: the dead reservation no longer counts
    assert not dead.exists() and live.exists()
    assert ledger(tmp_path) == 100 + 500 + 300
    g = Fetcher(blob("c", 300))
    c.get("c", g)  # 900 + 300 > 1000: must evict; the live 500 cannot be evicted
    assert ledger(tmp_path) <= 1000 and live.exists()
    assert ledger(tmp_path) == sum(os.path.getsize(p) for p in files_under(tmp_path) if ".tmp." not in p) + 500


# ---------------------------------------------------------------------------- failures


def test_fetch_errors_propagate_unchanged_and_leave_nothing(tmp_path):
    c = NodeCache(str(tmp_path), 1000)
    c.get("a", Fetcher(blob("a", 100)))
    boom = ConnectionError("storage said no")

    def fetch():
        raise boom

    with pytest.raises(ConnectionError) as e:
        c.get("b", fetch)
    assert e.value is boom
    assert not os.path.exists(c.path("b"))
    assert ledger(tmp_path) == 100 == disk_total(tmp_path)
    assert c.stats()["misses"] == 2


def test_half_written_object_is_never_visible_and_a_failed_write_leaks_nothing(tmp_path, monkeypatch, caplog):
    c = NodeCache(str(tmp_path), 10_000)
    c.get("a", Fetcher(blob("a", 100)))
    real_write = cache_mod._write_file
    seen = []

    def write_then_check(fd, data):  # the complete write: the object appears only after it
        real_write(fd, data[: len(data) // 2])
        seen.append((os.path.exists(c.path("b")), NodeCache(str(tmp_path), 10_000)._read("b")))
        real_write(fd, data[len(data) // 2:])

    monkeypatch.setattr(cache_mod, "_write_file", write_then_check)
    b = Fetcher(blob("b", 400))
    assert c.get("b", b) == b.data
    assert seen == [(False, None)]  # mid-write: no object file, a reader misses
    assert open(c.path("b"), "rb").read() == b.data

    def disk_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        assert not os.path.exists(c.path("c"))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "_write_file", disk_full)
    caplog.set_level(logging.WARNING, logger=cache_mod.__name__)
    f = Fetcher(blob("c", 300))
    assert c.get("c", f) == f.data  # training goes on with the fetched bytes
    assert not os.path.exists(c.path("c"))
    assert sorted(files_under(tmp_path)) == sorted([c.path("a"), c.path("b")])  # temp file removed
    assert ledger(tmp_path) == 500 == disk_total(tmp_path)  # reservation given back
    assert c.get("d", Fetcher(blob("d", 10))) == blob("d", 10)  # fetch-only from now on
    assert not os.path.exists(c.path("d"))
    assert c.get("a", Fetcher(b"")) == blob("a", 100)  # hits still served
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_uncreatable_cache_root_falls_back_to_fetch_only(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=cache_mod.__name__)
    (tmp_path / "file").write_text("not a folder")
    c = NodeCache.open(str(tmp_path / "file" / "cache"), 1000)
    f = Fetcher(b"bytes")
    assert c.get("a", f) == b"bytes" and c.get("a", f) == b"bytes"
    assert f.calls == 2
    c.fill(["a", "b"], lambda u: pytest.fail("fill must not download into a disabled cache"), 4)
    assert c.stats() == dict(files=0, bytes=0, hits=0, misses=2, fetches=2, evictions=0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without caching" in warnings[0].getMessage()


class ReadOnlyOS:
    """``os`` as the cache module sees it on a read-only file system (tests run as root: chmod won't do)."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def _erofs(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    def open(self, path, flags, *args):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            self._erofs(path)
        return os.open(path, flags, *args)

    def makedirs(self, path, *args, **kwargs):
        if not os.path.isdir(path):
            self._erofs(path)

    def utime(self, path, *args, **kwargs):
        self._erofs(path)

    def replace(self, src, dst):
        self._erofs(dst)

    def unlink(self, path):
        self._erofs(path)


def test_read_only_cache_serves_hits_and_fetches_misses(tmp_path, monkeypatch, caplog):
    NodeCache(str(tmp_path), 1000).get("a", Fetcher(blob("a", 100)))
    monkeypatch.setattr(cache_mod, "os", ReadOnlyOS())
    caplog.set_level(logging.WARNING, logger=cache_mod.__name__)
    c = NodeCache(str(tmp_path), 1000)
    assert c.get("a", Fetcher(b"")) == blob("a", 100)  # hit (its mtime cannot be bumped: fine)
    f = Fetcher(blob("b", 50))
    assert c.get("b", f) == f.data and c.get("b", f) == f.data and f.calls == 2
    monkeypatch.undo()
    assert not os.path.exists(c.path("b"))
    assert ledger(tmp_path) == 100 == disk_total(tmp_path)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


# ---------------------------------------------------------------------------- concurrency

WRITERS, OBJECTS_EACH, LIMIT = 2, 200, 16_000


def _writer(root, w, barrier, q):
    try:
        c = NodeCache.open(root, LIMIT)
        rng = random.Random(w)
        urls = [f"s3://bucket/w{w}/img{i}.jpg" for i in range(OBJECTS_EACH)]
        sizes = [rng.randint(1, 4000) for _ in urls]
        over, peak = [], 0
        barrier.wait(JOIN_S)
        for i, (url, n) in enumerate(zip(urls, sizes)):
            assert c.get(url, lambda: blob(url, n)) == blob(url, n)
            with cache_lock(root):  # an exact sample: nothing is added or removed meanwhile
                total = disk_total(root)
            peak = max(peak, total)
            if total > LIMIT:
                over.append((i, total))
            j = rng.randrange(i + 1)  # re-read an earlier object: hits race with the other's evictions
            assert c.get(urls[j], lambda: blob(urls[j], sizes[j])) == blob(urls[j], sizes[j])
        q.put((w, over, peak, c.stats()))
    except BaseException:
        q.put((w, traceback.format_exc(), 0, {}))
        raise


def test_two_processes_writing_concurrently_never_exceed_the_limit(tmp_path):
    root = str(tmp_path)
    barrier, q = mp.Barrier(WRITERS), mp.Queue()
    procs = [mp.Process(target=_writer, args=(root, w, barrier, q)) for w in range(WRITERS)]
    results = sorted(run_children(*procs, q=q))
    for w, over, peak, stats in results:
        assert over == [], f"writer {w} saw the cache over its limit: {over}"
        assert 0 < peak <= LIMIT
        assert stats["evictions"] > 0  # the test did exercise eviction
        assert stats["misses"] >= OBJECTS_EACH and stats["fetches"] == stats["misses"]
    assert disk_total(root) <= LIMIT
    assert not [p for p in files_under(root) if ".tmp." in os.path.basename(p)]
    assert ledger(root) == disk_total(root)  # no update of the ledger was lost


FILL_URLS = [f"az://c/img{i}.png" for i in range(40)]


def _filler(root, name, log_dir, a_inside, b_calling, q):
    try:
        c = NodeCache.open(root, 1_000_000)

        def fetch(url):
            if name == "a":
                a_inside.set()
                b_calling.wait(JOIN_S)  # b calls fill while a is mid-download
            with open(os.path.join(log_dir, f"{name}.log"), "a") as f:
                f.write(url + "\n")
            return blob(url, 1000)

        if name == "b":
            a_inside.wait(JOIN_S)
            b_calling.set()
        c.fill(FILL_URLS, fetch, threads=4)
        q.put((name, c.stats()["fetches"]))
    except BaseException:
        q.put((name, traceback.format_exc()))
        raise


def test_concurrent_fill_on_one_node_fetches_each_object_once(tmp_path):
    root, logs = str(tmp_path / "cache"), tmp_path / "logs"
    logs.mkdir()
    a_inside, b_calling, q = mp.Event(), mp.Event(), mp.Queue()
    procs = [mp.Process(target=_filler, args=(root, n, str(logs), a_inside, b_calling, q)) for n in "ab"]
    fetches = dict(run_children(*procs, q=q))
    fetched = [ln for f in logs.iterdir() for ln in f.read_text().splitlines()]
    assert sorted(fetched) == sorted(FILL_URLS)  # every url exactly once, over both processes
    assert fetches == {"a": len(FILL_URLS), "b": 0}
    c = NodeCache(root, 1_000_000)
    c.fill(FILL_URLS, lambda u: pytest.fail(f"{u} fetched again"), 4)
    assert all(c.get(u, lambda: pytest.fail("miss")) == blob(u, 1000) for u in FILL_URLS)
    assert ledger(root) == 40 * 1000 == disk_total(root)


def test_fill_skips_present_objects_and_propagates_the_first_fetch_error(tmp_path):
    c = NodeCache(str(tmp_path), 1_000_000)
    c.get(FILL_URLS[0], lambda: blob(FILL_URLS[0], 1000))
    bad = FILL_URLS[5]
    err = PermissionError("no access to " + bad)

    def fetch(url):
        if url == bad:
            raise err
        return blob(url, 1000)

    with pytest.raises(PermissionError) as e:
        c.fill(FILL_URLS, fetch, threads=4)
    assert e.value is err
    assert not [p for p in files_under(tmp_path) if ".tmp." in os.path.basename(p)]
    assert ledger(tmp_path) == disk_total(tmp_path)
    fetched = []
    c.fill(FILL_URLS, lambda u: fetched.append(u) or blob(u, 1000), threads=4)
    assert bad in fetched and FILL_URLS[0] not in fetched
    assert len(c.stats()) == 6 and c.stats()["files"] == len(FILL_URLS)


def _streamer(root, name, a_fetching, b_started, release, q):
    try:
        c = NodeCache(root, 1_000_000)
        url = "az://c/same-order.png"
        calls = []

        def fetch():
            calls.append(url)
            if name == "a":
                a_fetching.set()
                assert release.wait(JOIN_S)
            return blob(url, 1000)

        if name == "b":
            assert a_fetching.wait(JOIN_S)
            b_started.set()  # a is inside its fetch; b misses the same object now
        data = c.get(url, fetch)
        assert data == blob(url, 1000)
        q.put((name, len(calls)))
    except BaseException:
        q.put((name, traceback.format_exc()))
        raise


def test_two_processes_missing_the_same_object_fetch_it_once(tmp_path):
    """Streaming trials with the same seed read in the same order: the second waits for the first's fetch."""
    root = str(tmp_path / "cache")
    a_fetching, b_started, release, q = mp.Event(), mp.Event(), mp.Event(), mp.Queue()
    procs = [mp.Process(target=_streamer, args=(root, n, a_fetching, b_started, release, q)) for n in "ab"]
    procs[0].start()
    procs[1].start()
    assert b_started.wait(JOIN_S)
    release.set()
    results = dict(q.get(timeout=JOIN_S) for _ in procs)
    for p in procs:
        p.join(JOIN_S)
    assert [p.exitcode for p in procs] == [0, 0], results
    assert results == {"a": 1, "b": 0}
