"""The HTML sweep report (scheduler/report.py): built from a fake run folder, then parsed back."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from scheduler.report import write_report


def _trial(run: Path, tid: str, params: dict, metrics: list[dict], status: str, error: str | None = None) -> None:
    d = run / "trials" / tid
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(params))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (d / "status.json").write_text(json.dumps({"status": status, "error": error, "evaluations": len(metrics),
                                               "started": None, "ended": None}))


class _Page(HTMLParser):
    """Collects element ids, <script> bodies and the leaderboard's body rows (as lists of cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.scripts: list[str] = []
        self.script_srcs: list[str] = []
        self.rows: list[list[str]] = []
        self._in_script = self._in_board = self._in_body = False
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
            if a.get("src"):
                self.script_srcs.append(a["src"])
        elif tag == "table" and a.get("id") == "leaderboard":
            self._in_board = True
        elif tag == "tbody" and self._in_board:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        elif tag == "table":
            self._in_board = self._in_body = False
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        elif self._row:
            self._row[-1] += data


def _traces(page: str, div_id: str) -> list[dict]:
    """The trace list passed to Plotly.newPlot for one div."""
    m = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', page)
    assert m, f"no Plotly.newPlot for #{div_id}"
    traces, _ = json.JSONDecoder().raw_decode(page, m.end())
    return traces


def _layout_of(page: str, div_id: str) -> dict:
    """The layout passed to Plotly.newPlot for one div (the argument after the traces)."""
    m = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', page)
    dec = json.JSONDecoder()
    _, end = dec.raw_decode(page, m.end())
    layout, _ = dec.raw_decode(page, page.index("{", end))
    return layout


def _parse(path: Path) -> tuple[str, _Page]:
    page = path.read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(page)
    return page, parser


def _assert_offline(page: str, parsed: _Page) -> None:
    assert parsed.script_srcs == []  # nothing fetched from a CDN
    assert len([s for s in parsed.scripts if len(s) > 1_000_000]) == 1  # the inlined plotly.js bundle
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1


def test_report_from_run_folder(tmp_path):
    run = tmp_path / "run"
    # still running: no summary.json and no leaderboard.csv; the primary metric comes from the resolved job
    run.mkdir()
    (run / "job.resolved.yaml").write_text("task: image_classification\nprimary_metric: accuracy\n")
    evals = [{"epoch": e, "accuracy": a, "validation_loss": 1.0 / e} for e, a in ((1, 0.4), (2, 0.6), (3, 0.5))]
    _trial(run, "aaa1", {"model_name": "resnet18", "learning_rate": 0.01}, evals, "completed")  # best is epoch 2
    _trial(run, "bbb2", {"model_name": "mobilenetv2", "learning_rate": 0.05},
           [{"epoch": 1, "accuracy": 0.2, "validation_loss": 2.0}], "stopped (median_stopping)")
    _trial(run, "ccc3", {"model_name": "resnet18", "learning_rate": 0.002}, [], "running")

    out = write_report(run)
    assert out == run / "report.html"
    page, parsed = _parse(out)
    _assert_offline(page, parsed)
    assert {"metric-curves", "parallel-coordinates", "scatter", "leaderboard"} <= parsed.ids

    # curves: one per trial with metrics; the stopped one dashed, ending in an "x", "(stopped)" in its name
    curves = {t["legendgroup"]: t for t in _traces(page, "metric-curves")}
    assert set(curves) == {"aaa1", "bbb2"}
    assert all(t["name"].split()[0] == tid for tid, t in curves.items())
    assert curves["aaa1"]["x"] == [1, 2, 3] and curves["aaa1"]["line"]["dash"] == "solid"
    stopped = curves["bbb2"]
    assert stopped["line"]["dash"] == "dash" and stopped["marker"]["symbol"][-1] == "x"
    assert "mobilenetv2" in stopped["name"] and "(stopped)" in stopped["name"]

    # parallel coordinates: one axis per hyperparameter, then the metric (also the colour)
    (parcoords,) = _traces(page, "parallel-coordinates")
    assert parcoords["type"] == "parcoords"
    dims = {d["label"]: d for d in parcoords["dimensions"]}
    assert list(dims) == ["model_name", "learning_rate", "accuracy"]
    assert dims["model_name"]["ticktext"] == ["mobilenetv2", "resnet18"]
    assert sorted(dims["accuracy"]["values"]) == [0.2, 0.6] == sorted(parcoords["line"]["color"])

    # 2-D scatter: the numeric hyperparameter on x, the label one on y, coloured by the metric on a scale fitted to
    # the values (0.2..0.6, not plotly's padded default); menus pick each axis among the varying hyperparameters
    (scatter,) = _traces(page, "scatter")
    assert sorted(scatter["x"]) == [0.01, 0.05] and sorted(scatter["y"]) == ["mobilenetv2", "resnet18"]
    assert sorted(scatter["marker"]["color"]) == [0.2, 0.6]
    assert (scatter["marker"]["cmin"], scatter["marker"]["cmax"]) == (0.2, 0.6)
    layout = _layout_of(page, "scatter")
    x_menu, y_menu = layout["updatemenus"]
    assert [b["label"] for b in x_menu["buttons"]] == ["learning_rate", "model_name", "trial index", "best accuracy"]
    best_button = y_menu["buttons"][3]
    assert sorted(best_button["args"][0]["y"][0]) == [0.2, 0.6]
    assert best_button["args"][1]["yaxis.title.text"] == "best accuracy"

    # 3-D scatter: the two varying hyperparameters and the best metric, rotatable
    (scatter3d,) = _traces(page, "scatter-3d")
    assert scatter3d["type"] == "scatter3d" and sorted(scatter3d["z"]) == [0.2, 0.6]

    # every hyperparameter of every trial: those that differ per trial (sampled ones bold), the rest once
    assert "trial-details" in parsed.ids and "The same in every trial" in page

    # leaderboard built from the trial files: 3 rows, best first, the stopped trial marked
    assert [r[1] for r in parsed.rows] == ["aaa1", "bbb2", "ccc3"]
    assert "stopped early" in parsed.rows[1][2]
    assert 'class="stopped"' in page


def test_single_trial_defaults_and_escaping(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"mode": "manual", "task": "image_classification",
                                                  "primary_metric": "iou", "trials": 1, "best_trial": "t<1>",
                                                  "best_metric": 0.5, "elapsed_s": 12.0}))
    _trial(run, "t1", {}, [], "error", error="boom <script>alert(1)</script>")
    (run / "trials" / "t1" / "metrics.jsonl").write_text('{"epoch": 1, "iou": 0.5}\n{"epoch": 2, "io')  # torn line

    page, parsed = _parse(write_report(run))
    _assert_offline(page, parsed)
    assert [t["name"] for t in _traces(page, "metric-curves")] == ["t1 (error)"]
    assert "parallel-coordinates" in parsed.ids  # a note: no hyperparameters were sampled
    (scatter,) = _traces(page, "scatter")  # best metric per trial instead
    assert scatter["x"] == [1] and scatter["y"] == [0.5]
    # one value: the colour scale still spans a range around it
    assert scatter["marker"]["cmin"] < 0.5 < scatter["marker"]["cmax"]
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "t&lt;1&gt;" in page
    assert len(parsed.rows) == 1


def test_a_thousand_trial_sweep_draws_the_best_curves_and_a_band_for_the_rest(tmp_path):
    from scheduler.report import CURVES_SHOWN

    run = tmp_path / "run"
    run.mkdir()
    (run / "job.resolved.yaml").write_text("task: image_classification\nprimary_metric: accuracy\n")
    n = CURVES_SHOWN + 15
    for i in range(n):  # trial i reaches i / n: the last CURVES_SHOWN trials are the best
        _trial(run, f"t{i:03d}", {"learning_rate": 0.001 * (i + 1)},
               [{"epoch": e, "accuracy": i / n * e / 3} for e in (1, 2, 3)], "completed")
    page, _ = _parse(write_report(run))
    traces = _traces(page, "metric-curves")
    curves = [t for t in traces if t.get("legendgroup") != "rest"]
    band = [t for t in traces if t.get("legendgroup") == "rest"]
    assert sorted(t["legendgroup"] for t in curves) == [f"t{i:03d}" for i in range(15, n)]
    assert [t["name"] for t in band] == ["the other 15 trials: range", "the other 15 trials: median"]
    median = band[1]
    assert median["x"] == [1, 2, 3] and median["customdata"] == [15, 15, 15]
    assert abs(median["y"][2] - 7 / n) < 1e-9  # trials 0..14 at epoch 3: median of i / n is trial 7's
    assert f"the best {CURVES_SHOWN} of {n} trials" in page


def test_full_parameters_logs_and_the_live_marker(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.resolved.yaml").write_text("task: image_classification\nprimary_metric: accuracy\n")
    for tid, lr, acc in (("t1", 0.01, 0.5), ("t2", 0.1, 0.7)):
        d = run / "trials" / tid
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"sampled": {"learning_rate": lr},
                                                   "fixed": {"number_of_epochs": 3},
                                                   "default": {"optimizer": "sgd", "momentum": 0.9}}))
        (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "accuracy": acc}) + "\n")
        (d / "status.json").write_text(json.dumps({"status": "running"}))
    (run / "trials" / "t2" / "log.txt").write_text("epoch 1 done\n")

    page, parsed = _parse(write_report(run, live=True))
    assert "live" in parsed.ids and 'http-equiv="refresh"' in page
    # the trial table: learning_rate differs (sampled, bold), the others are listed once as the same everywhere
    details = page[page.index('id="trial-details"'):]
    assert "<td class=sampled>0.1</td>" in details and "<th>optimizer</th><td>sgd</td>" in details
    assert "<th>number_of_epochs</th><td>3</td>" in details
    assert details.count('href="trials/t2/log.txt"') == 1 and 'href="trials/t1/log.txt"' not in page
    assert 'href="trials/t2/log.txt"' in page[:page.index('id="trial-details"')]  # linked from the leaderboard too
    assert "What the best model predicts" not in page  # drawn once the sweep has ended

    page, parsed = _parse(write_report(run))
    assert "live" not in parsed.ids and 'http-equiv="refresh"' not in page
    assert not list(run.glob(".*.tmp"))  # written atomically: no temporary file left


def _summary_rows(page: str) -> dict[str, str]:
    table = page[page.index('<table class="summary">'):]
    table = table[:table.index("</table>")]
    return dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", table))


def test_a_running_sweep_shows_its_mode_and_the_time_since_it_started(tmp_path):
    """While the sweep runs there is no summary.json: the mode and the start come from sweep.json (written by the
    controller), and elapsed runs from that start to now, not over the trials that happen to have ended."""
    import time

    run = tmp_path / "run"
    run.mkdir()
    (run / "job.resolved.yaml").write_text("task: image_classification\nprimary_metric: accuracy\n")
    from scheduler.runfolder import write_sweep_file

    started = time.time() - 3 * 3600  # three hours ago
    write_sweep_file(run, task="image_classification", mode="manual", primary_metric="accuracy", total_trials=4,
                     started=started, updated=started + 600)
    _trial(run, "t1", {"learning_rate": 0.01}, [{"epoch": 1, "accuracy": 0.5}], "completed")
    status = json.loads((run / "trials" / "t1" / "status.json").read_text())
    status.update(started=started + 10, ended=started + 11.9)  # a trial that ended 1.9 s after it started
    (run / "trials" / "t1" / "status.json").write_text(json.dumps(status))

    rows = _summary_rows(write_report(run, live=True).read_text())
    assert rows["Mode"] == "manual"
    assert rows["Elapsed"].startswith("3 h 0 min") and "still running" in rows["Elapsed"], rows["Elapsed"]
    # written by `visionsweep report` (not the live view) with no summary.json: up to the last heartbeat
    rows = _summary_rows(write_report(run).read_text())
    assert rows["Elapsed"].startswith("10 min 0 s"), rows["Elapsed"]
    # once the sweep has ended, summary.json says
    (run / "summary.json").write_text(json.dumps({"mode": "automode", "elapsed_s": 42.0}))
    rows = _summary_rows(write_report(run).read_text())
    assert (rows["Mode"], rows["Elapsed"]) == ("automode", "42.0 s")


def test_the_epoch_axis_has_integer_ticks_only(tmp_path):
    from scheduler.report import epoch_axis

    run = tmp_path / "run"
    run.mkdir()
    (run / "job.resolved.yaml").write_text("task: image_classification\nprimary_metric: accuracy\n")
    _trial(run, "t1", {}, [{"epoch": e, "accuracy": 0.1 * e} for e in (1, 2, 3)], "completed")
    xaxis = _layout_of(write_report(run).read_text(), "metric-curves")["xaxis"]
    assert (xaxis["tickmode"], xaxis["dtick"], xaxis["tickformat"]) == ("linear", 1, "d")
    assert xaxis["title"]["text"] == "epoch"
    # a long sweep: whole steps of 1, 2, 5, 10 ... epochs, about ten ticks at most
    for last in (1, 3, 10, 11, 37, 100, 101, 999, 5000):
        step = epoch_axis(last)["dtick"]
        assert isinstance(step, int) and step >= 1 and last / step <= 10 and (step == 1 or last / step > 4)
