"""Progress lines of long steps (trainers.progress): a fake clock and in-memory streams, no sleeps but the phase
timer's few hundredths of a second; one real node-cache download from fsspec's memory filesystem."""

from __future__ import annotations

import io
import re
import threading
import time

import pytest

from trainers.progress import PERIOD_ENV, Progress, human_duration, human_size, phase


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def tick(self, s: float) -> None:
        self.t += s


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _default_period(monkeypatch):
    monkeypatch.delenv(PERIOD_ENV, raising=False)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_log_gets_a_full_line_each_period_with_count_rate_and_eta_then_a_final_line():
    clock, out = Clock(), io.StringIO()
    with Progress("checking image headers", 100, stream=out, clock=clock) as p:
        for _ in range(10):  # 10 items a second for 10 s: nothing before the period
            clock.tick(1)
            p.update(1) if clock.t < 1010 else None
        assert out.getvalue() == ""
        p.update(1)  # 10 s in, 10 items: the first line
        for _ in range(40):  # 40 more updates within the next 4 s: no line
            clock.tick(0.1)
            p.update(1)
        assert lines(out) == ["checking image headers: 10/100 (10%), 1.0/s, ETA 1m30s"]
        clock.tick(6)  # 20 s in, 50 of 100
        p.update(0)
        clock.tick(10)
        p.update(50)  # all done: the final line says it
    got = lines(out)
    assert got[1] == "checking image headers: 50/100 (50%), 2.5/s, ETA 20s", got
    assert got[2] == "checking image headers: 100/100 done in 30s, 3.3/s", got
    assert len(got) == 3


def test_the_period_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(PERIOD_ENV, "2")
    clock, out = Clock(), io.StringIO()
    with Progress("x", 10, stream=out, clock=clock) as p:
        for _ in range(6):
            clock.tick(1)
            p.update(1)
    assert [line.split(",")[0] for line in lines(out)] == ["x: 2/10 (20%)", "x: 4/10 (40%)", "x: 6/10 (60%)",
                                                          "x: 6/10 done in 6.0s"]
    monkeypatch.setenv(PERIOD_ENV, "soon")  # not a number: the default, never an error
    assert Progress("y", stream=io.StringIO()).period_s == 10


def test_a_short_task_prints_nothing_at_all():
    clock, out, tty = Clock(), io.StringIO(), Terminal()
    with Progress("downloading", 3, stream=out, clock=clock) as p:
        for _ in range(3):
            clock.tick(0.25)  # 0.75 s in all: not even the final line
            p.update(1)
    with Progress("redrawing", 3, stream=tty, clock=clock) as p:
        for _ in range(3):
            clock.tick(0.25)
            p.update(1)
    assert out.getvalue() == "" and tty.getvalue() == ""


def test_period_zero_prints_every_update_even_when_quick(monkeypatch):
    monkeypatch.setenv(PERIOD_ENV, "0")
    clock, out = Clock(), io.StringIO()
    with Progress("x", 2, stream=out, clock=clock) as p:
        p.update(1)
        p.update(1)
    assert lines(out) == ["x: 1/2 (50%)", "x: 2/2 done in 0.0s"]


def test_a_terminal_gets_one_line_redrawn_in_place_at_most_ten_times_a_second():
    clock, tty = Clock(), Terminal()
    with Progress("downloading resnet50.pth", 100 * 2**20, "bytes", stream=tty, clock=clock) as p:
        clock.tick(0.5)
        p.update(2**20)  # within the first second: quiet
        assert tty.getvalue() == ""
        for _ in range(8):  # 16 updates a second, from 1 s in: a redraw every other one
            clock.tick(0.0625)
            p.update(2**20)
        assert tty.getvalue().startswith("\r")
        for _ in range(8):
            clock.tick(0.0625)
            p.update(2**20)
    text = tty.getvalue()
    assert "\n" not in text[:-1] and text.endswith("\n")  # one line, ended when the step ends
    draws = text.split("\r")[1:]
    assert len(draws) == 5 + 1, draws  # at 1.0, 1.125, 1.25, 1.375 and 1.5 s, then the final line
    assert draws[0] == "downloading resnet50.pth: 9.00 MiB/100.00 MiB (9%), 9.00 MiB/s, ETA 10s"
    assert draws[-1].rstrip() == "downloading resnet50.pth: 17.00 MiB/100.00 MiB done in 1.5s, 11.33 MiB/s"
    assert len(draws[-1]) - 1 >= len(draws[-2])  # padded over what the longer line before it left


def test_items_carrying_bytes_show_both_and_an_unknown_total_shows_no_eta():
    clock, out = Clock(), io.StringIO()
    with Progress("downloading images into the node cache", None, stream=out, clock=clock, period_s=5) as p:
        clock.tick(5)
        p.update(50, nbytes=5 * 2**20)
    assert lines(out) == ["downloading images into the node cache: 50, 5.00 MiB, 10/s (1.00 MiB/s)",
                          "downloading images into the node cache: 50 (5.00 MiB) done in 5.0s, 10/s"]


def test_a_failure_says_where_it_stopped():
    clock, out = Clock(), io.StringIO()
    with pytest.raises(RuntimeError), Progress("x", 10, stream=out, clock=clock) as p:
        clock.tick(3)
        p.update(4)
        raise RuntimeError("storage went away")
    assert lines(out) == ["x: stopped at 4/10 after 3.0s"]


def test_units_in_human_form():
    assert [human_size(n) for n in (0, 1023, 1024, 5 * 2**20 + 2**19, 3 * 2**30)] == \
        ["0 bytes", "1023 bytes", "1.00 KiB", "5.50 MiB", "3.00 GiB"]
    assert [human_duration(s) for s in (0.04, 9.94, 41.2, 725, 7380)] == ["0.0s", "9.9s", "41s", "12m05s", "2h03m"]
    with pytest.raises(ValueError):
        Progress("x", unit="pixels")


def test_updates_from_many_threads_are_all_counted_and_lines_never_interleave():
    out = io.StringIO()
    with Progress("x", 8 * 500, stream=out, period_s=0) as p:
        def work():
            for _ in range(500):
                p.update(1, nbytes=10)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert p.count == 4000 and p.nbytes == 40000
    got = lines(out)
    assert len(got) == 4000  # every update but the last, then the final line
    assert all(re.fullmatch(r"x: \d+/4000 \(\d+%\), [\d.]+ (KiB|MiB|bytes).*", line) for line in got[:-1]), got[:3]
    assert got[-1].startswith("x: 4000/4000 (39.06 KiB) done in")


def test_a_phase_says_so_only_when_it_lasts():
    out = io.StringIO()
    with phase("tracing", out, quiet_s=5):
        pass
    assert out.getvalue() == ""
    with phase("tracing", out, quiet_s=0.02):
        time.sleep(0.2)
    assert lines(out)[0] == "tracing ..." and lines(out)[1].startswith("tracing: done in ")
    out = io.StringIO()
    with pytest.raises(KeyError), phase("checking", out, quiet_s=0):
        raise KeyError("x")
    assert lines(out) == ["checking ...", "checking: failed after 0.0s"]


def test_a_node_cache_download_reports_its_progress(monkeypatch, tmp_path, capsys):
    """The real thing: materialize() of remote (fsspec memory://) images into a node cache, with every update
    printed (VISIONSWEEP_PROGRESS_S=0)."""
    import fsspec

    from trainers.data.images import ImageStore

    monkeypatch.setenv(PERIOD_ENV, "0")
    fs = fsspec.filesystem("memory")
    urls = [f"memory://progress-test/img{i}.jpg" for i in range(6)]
    for u in urls:
        fs.pipe(u.removeprefix("memory://"), b"x" * 1000)
    try:
        ImageStore(cache_dir=str(tmp_path / "cache"), cache_max_bytes=10**6).materialize(urls, threads=3)
    finally:
        fs.rm("progress-test", recursive=True)
    got = [line for line in capsys.readouterr().err.splitlines() if line.startswith("downloading images")]
    assert len(got) == 6, got  # 5 updates, then the final line
    assert got[0].startswith("downloading images into the node cache: 1/6 (17%), 1000 bytes, ")
    assert got[-1].startswith("downloading images into the node cache: 6/6 (5.86 KiB) done in ")


def test_a_weights_download_and_a_store_fetch_report_their_bytes(monkeypatch, tmp_path, capsys):
    """``download`` (HTTP, sized by Content-Length) and ``_fetch_remote`` (fsspec, sized by its callback)."""
    import functools
    import http.server

    import fsspec

    from trainers.models.weights import sources

    monkeypatch.setenv(PERIOD_ENV, "0")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "w.pth").write_bytes(b"w" * (3 * 2**20))
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "www"))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        sources.download(f"http://127.0.0.1:{srv.server_address[1]}/w.pth", tmp_path / "got" / "w.pth", 10)
    finally:
        srv.shutdown()
        srv.server_close()
    got = capsys.readouterr().err.splitlines()
    assert got[0].startswith("downloading w.pth: 1.00 MiB/3.00 MiB (33%), "), got
    assert got[-1].startswith("downloading w.pth: 3.00 MiB/3.00 MiB done in "), got

    fs = fsspec.filesystem("memory")
    fs.pipe("progress-weights/r.pth", b"r" * (2**20 + 5))
    try:
        cfg = sources.WeightsConfig.create(cache_dir=str(tmp_path / "cache"))
        sources._fetch_remote("memory://progress-weights/r.pth", tmp_path / "cache" / "r.pth", cfg)
    finally:
        fs.rm("progress-weights", recursive=True)
    got = capsys.readouterr().err.splitlines()
    assert got and got[-1].startswith("fetching r.pth: 1.00 MiB/1.00 MiB done in "), got
    assert (tmp_path / "cache" / "r.pth").stat().st_size == 2**20 + 5


def test_the_image_check_counts_the_headers_it_read(monkeypatch, tmp_path, capsys):
    from types import SimpleNamespace

    from PIL import Image

    from trainers.data.images import check_images

    monkeypatch.setenv(PERIOD_ENV, "0")
    recs = []
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
        recs.append(SimpleNamespace(image_url=str(tmp_path / f"{i}.png"), source=f"train.jsonl:{i + 1}"))
    assert check_images(recs, what="training image") == recs
    got = capsys.readouterr().err.splitlines()
    assert got[0].startswith("checking training image headers: 1/4 (25%), "), got
    assert got[-1].startswith("checking training image headers: 4/4 done in "), got
