"""Watching a sweep while it runs: the live report in a real browser, ``visionsweep status``, trial logs, and MLflow's
REST API as the studio — all read while a real sweep (a ``visionsweep run`` process on an embedded Ray) trains."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import from_scratch, small_sample

pytestmark = pytest.mark.ray

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIGURES = ("metric-curves", "parallel-coordinates", "scatter", "scatter-3d")
TIMEOUT_S = 600  # a bound on each wait for an event, so a broken sweep fails the test instead of hanging it


def _wait(cond, what: str, proc: subprocess.Popen | None = None, every_s: float = 0.1):
    """Poll ``cond`` until it returns something truthy (the event), failing if ``proc`` ends first."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: rc {proc.returncode}")
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def render(page: Path, tmp: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium (software WebGL for the 3-D scatter)."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", f"--user-data-dir={tmp / 'chromium'}",
         # virtual time: under the live page's reload period (10 s), or Chromium follows the reload and never ends
         "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def assert_drawn(dom: str) -> None:
    """No script error reached the page's error box, and plotly drew every figure (its SVG root in each div)."""
    box = re.search(r'<pre id="script-errors"([^>]*)>(.*?)</pre>', dom, re.S)
    assert box and "hidden" in box.group(1) and not box.group(2).strip(), box and box.group(2)
    starts = sorted((dom.index(f'id="{f}"'), f) for f in FIGURES)
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(dom), "")]):
        assert 'class="main-svg"' in dom[start:end], f"{name} was not drawn"
    i = dom.index('id="scatter-3d"')
    assert "gl-container" in dom[i:i + 200_000]  # the 3-D scene (WebGL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server (the one ``mlflow server`` starts), on a free port."""
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--default-artifact-root", (tmp_path / "mlartifacts").as_uri(), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "mlflow.log", "w"))
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return False
    try:
        _wait(up, "the MLflow server", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _runs(url: str) -> list[dict]:
    exps = _post(f"{url}/api/2.0/mlflow/experiments/search", {"max_results": 10}).get("experiments", [])
    ids = [e["experiment_id"] for e in exps if e["name"] == "live-view"]
    return _post(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": ids}).get("runs", []) if ids else []


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make setup installs it)")
def test_a_running_sweep_is_watched_in_the_browser_the_terminal_and_mlflow(tmp_path, mlflow_server):
    data = small_sample(tmp_path / "data", per_class=20)
    job = tmp_path / "job.yml"
    job.write_text(from_scratch(f"""\
type: automl
task: image_classification
experiment_name: live-view
target_column_name: label
training_data: {{path: {data}, type: mltable}}
limits: {{max_trials: 2, max_concurrent_trials: 1}}
training_parameters:
  model_name: resnet18
  number_of_epochs: 4
  early_stopping: 0
  training_batch_size: 16
  validation_batch_size: 32
  training_crop_size: 32
  validation_resize_size: 32
  validation_crop_size: 32
search_space:
  - learning_rate: {{type: choice, values: [0.01, 0.05]}}
sweep: {{sampling_algorithm: grid}}
visionsweep: {{tracking: {{uri: "{mlflow_server}"}}}}
"""))
    run = tmp_path / "run"
    env = {**os.environ, "VISIONSWEEP_REPORT_S": "0.5", "VISIONSWEEP_REPORT_PREDICTIONS": "1",
           "VISIONSWEEP_DATA_CHECK": "quick"}
    env.pop("RAY_ADDRESS", None)
    sweep = subprocess.Popen([sys.executable, "-m", "visionsweep.cli", "run", str(job), "-o", str(run)], env=env,
                             stdout=subprocess.PIPE, stderr=open(tmp_path / "run.err", "w"), text=True)
    try:
        # MLflow while the sweep runs: a child run still RUNNING already has per-epoch metrics
        def live_child():
            for r in _runs(mlflow_server):
                tags = _tags(r)
                if "mlflow.parentRunId" not in tags or r["info"]["status"] != "RUNNING":
                    continue
                q = urllib.parse.urlencode({"run_id": r["info"]["run_id"], "metric_key": "accuracy"})
                history = _get(f"{mlflow_server}/api/2.0/mlflow/metrics/get-history?{q}").get("metrics", [])
                if history:
                    return r, history
            return None
        child, history = _wait(live_child, "a running child run with metrics", sweep)
        assert [m["step"] for m in history][0] == 1  # one point per epoch, from epoch 1
        parent_id = _tags(child)["mlflow.parentRunId"]
        parent = _get(f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={parent_id}")["run"]
        assert parent["info"]["status"] == "RUNNING"
        params = {p["key"]: p["value"] for p in child["data"]["params"]}  # every hyperparameter, not just the sampled
        assert params["learning_rate"] in ("0.01", "0.05") and params["number_of_epochs"] == "4"
        assert "momentum" in params and _tags(child)["visionsweep.sampled"] == "learning_rate"

        # the terminal: status names a running trial with its epochs (of 4) and the sweep's size. Read in this
        # process until a trial is seen running (the MLflow child above may have ended since, the next one not yet
        # begun); then the command itself, whose stdout is the JSON only
        from scheduler.status import read_status

        def running_trial():
            st = read_status(run)
            return st if any(t.status == "running" for t in st.trials) else None
        st = _wait(running_trial, "status to show a running trial", sweep)
        assert st.total_trials == 2 and st.state == "running"
        assert all(t.epochs == 4 for t in st.trials if t.status == "running")
        out = subprocess.run([sys.executable, "-m", "visionsweep.cli", "status", str(run), "--json"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        shown = json.loads(out.stdout)  # stdout is the JSON only
        assert shown["total_trials"] == 2 and shown["state"] in ("running", "finished")

        # the browser: the live page, every figure drawn, no script error, the live marker
        snapshot = tmp_path / "live.html"

        def live_page():
            # a live page written after the first evaluation (on a loaded machine the page on disk can still be the
            # one the live view wrote before it: the next rewrite comes within VISIONSWEEP_REPORT_S of idle CPU)
            page = run / "report.html"
            text = page.read_text(encoding="utf-8") if page.is_file() else ""
            if 'id="live"' in text and "No evaluation has been recorded yet" not in text:
                snapshot.write_text(text, encoding="utf-8")  # the page read, not a later one
                return True
            return False
        _wait(live_page, "the live report", sweep)
        dom = render(snapshot, tmp_path)
        assert 'id="live"' in dom and 'http-equiv="refresh"' in dom
        assert "<th>Mode</th><td>manual</td>" in dom  # from sweep.json: there is no summary.json yet
        assert_drawn(dom)

        stdout, _ = sweep.communicate(timeout=TIMEOUT_S)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, (tmp_path / "run.err").read_text()[-3000:]
    err = (tmp_path / "run.err").read_text()
    assert "report.html (live" in err  # the user is told where to look while it runs
    for noise in ("Token authentication is enabled", "Creating initial MLflow database tables"):
        assert noise not in err

    # after the end: the final page has no live marker and draws everything; status says finished
    dom = render(run / "report.html", tmp_path)
    assert 'id="live"' not in dom and 'http-equiv="refresh"' not in dom
    assert_drawn(dom)
    assert 'id="confusion-matrix"' in dom and "data:image/png;base64," in dom  # what the best model predicts
    # the data check before the trials: its section in the rendered page, with the run's per-class counts
    assert '<div id="data">' in dom and "data check (quick, 60 images)" in dom and "<td>Trouser</td><td>" in dom
    st = json.loads(subprocess.run([sys.executable, "-m", "visionsweep.cli", "status", str(run), "--json"],
                                   capture_output=True, text=True).stdout)
    assert st["state"] == "finished" and st["done"] == 2 and st["eta_s"] == 0
    assert {t["decision"] for t in st["trials"]} == {"ran all its epochs"}

    # each trial's log: what it printed, in the run folder, linked from the report and an MLflow artifact
    for t in (run / "trials").iterdir():
        log = (t / "log.txt").read_text()
        assert "trial: resnet18" in log and log.count("evaluation: ") == 4
        assert f'href="trials/{t.name}/log.txt"' in (run / "report.html").read_text(encoding="utf-8")
    children = [r for r in _runs(mlflow_server) if "mlflow.parentRunId" in _tags(r)]
    assert len(children) == 2
    for r in children:
        listed = _get(f"{mlflow_server}/api/2.0/mlflow/artifacts/list?run_id={r['info']['run_id']}")
        assert "log.txt" in {f["path"] for f in listed.get("files", [])}
